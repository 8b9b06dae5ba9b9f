"""Fixtures for the validator tests: a real DNS server (dnslib), a real HTTP server (asyncio),
and a migrated SQLite database."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from acme_ra.db.migrate import upgrade
from acme_ra_validator.resolver import NameResolver


def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """Answers from a dict of records like a recursive resolver would: CNAME chains included."""

    def __init__(self) -> None:
        self.records: dict[str, list[RR]] = {}
        self.servfail: set[str] = set()

    def add(self, zone_line: str) -> None:
        for rr in RR.fromZone(zone_line):
            self.records.setdefault(str(rr.rname).lower(), []).append(rr)

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower()
        qtype = request.q.qtype
        for _ in range(8):
            if name in self.servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            records = self.records.get(name)
            if not records:
                if not reply.rr:
                    reply.header.rcode = RCODE.NXDOMAIN
                return reply
            cnames = [rr for rr in records if rr.rtype == QTYPE.CNAME]
            if cnames and qtype != QTYPE.CNAME:
                reply.add_answer(cnames[0])
                name = str(cnames[0].rdata.label).lower()
                continue
            for rr in records:
                if rr.rtype == qtype:
                    reply.add_answer(rr)
            return reply
        return reply


@dataclass
class DnsLab:
    zone: ZoneResolver
    address: tuple[str, int]

    def resolver(self) -> NameResolver:
        return NameResolver([self.address], lifetime=2.0)


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsLab]:
    zone = ZoneResolver()
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _line: None))
    server.start_thread()
    try:
        yield DnsLab(zone, server.server.server_address[:2])
    finally:
        server.stop()
        server.server.server_close()


@pytest.fixture
def dns_lab(dns_server: DnsLab) -> DnsLab:
    """The session's DNS server with an empty zone."""
    dns_server.zone.records.clear()
    dns_server.zone.servfail.clear()
    return dns_server


@dataclass
class HttpLab:
    """A tiny HTTP/1.1 server: ``routes[path] = (status, headers, body)``; records (path, Host)."""

    port: int = 0
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            _method, path, _version = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            self.requests.append((path, headers.get("host")))
            status, extra, body = self.routes.get(path, (404, {}, b"not found"))
            lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass


@pytest.fixture
async def http_lab() -> AsyncIterator[HttpLab]:
    lab = HttpLab()
    server = await asyncio.start_server(lab.serve, "127.0.0.1", 0)
    lab.port = server.sockets[0].getsockname()[1]
    try:
        yield lab
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database (migrations use asyncio.run: run them on their own thread)."""
    path: Path = tmp_path_factory.mktemp("validator-db") / "acme-ra.db"
    url = f"sqlite+aiosqlite:///{path}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade, url).result()
    return url
