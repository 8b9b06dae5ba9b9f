"""Fixtures for the validator tests: a real DNS server (dnslib), real HTTP and TLS servers
(asyncio), challenge certificates, and a migrated SQLite database.

The servers listen on loopback, which the validator refuses by default (SSRF guard): tests use
``LAB_POLICY``, what ``ACME_RA_VALIDATION_ALLOW_NETWORKS=127.0.0.0/8,::1/128`` gives.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dnslib import CAA, QTYPE, RCODE, RR, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from acme_ra.db.migrate import upgrade
from acme_ra_tools.supervisor import free_port
from acme_ra_validator.network import NetworkPolicy
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.tlsalpn01 import ID_PE_ACME_IDENTIFIER, acme_identifier_value

# What the labs set: ACME_RA_VALIDATION_ALLOW_NETWORKS=127.0.0.0/8,::1/128.
LAB_ALLOW_NETWORKS = "127.0.0.0/8,::1/128"
LAB_POLICY = NetworkPolicy.from_lists(LAB_ALLOW_NETWORKS)

# The validator tests import it from here.
unused_port = free_port



class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """Answers from a dict of records like a recursive resolver would: CNAME chains included."""

    def __init__(self) -> None:
        self.records: dict[str, list[RR]] = {}
        self.servfail: set[str] = set()

    def add(self, zone_line: str) -> None:
        for rr in RR.fromZone(zone_line):
            self.records.setdefault(str(rr.rname).lower(), []).append(rr)

    def add_caa(self, name: str, tag: str, value: str, flags: int = 0) -> None:
        """A CAA record (built directly: a zone line would take ";" for a comment)."""
        rr = RR(DNSLabel(name), QTYPE.CAA, rdata=CAA(flags, tag, value), ttl=60)
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
    """A tiny HTTP/1.1 server: ``routes[path] = (status, headers, body)``; records (path, Host),
    and every request's headers (lower-case names) in ``headers``."""

    port: int = 0
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            _method, path, _version = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            self.requests.append((path, headers.get("host")))
            self.headers.append(headers)
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


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _close_at_once(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, ssl.SSLError):
        pass


@dataclass
class TlsLab:
    """TLS servers on loopback, each presenting one certificate; records the SNI names seen."""

    directory: Path
    server_names: list[str | None] = field(default_factory=list)
    servers: list[asyncio.Server] = field(default_factory=list)

    async def serve(
        self,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        alpn: tuple[str, ...] = ("acme-tls/1",),
        handler: Handler = _close_at_once,
        host: str = "127.0.0.1",
    ) -> int:
        """Start a server; returns its port."""
        name = f"server-{len(self.servers)}"
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        context.set_alpn_protocols(list(alpn))
        context.sni_callback = lambda _sock, server_name, _context: self.server_names.append(server_name)
        server = await asyncio.start_server(_quiet(handler), host, 0, ssl=context)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


def _quiet(handler: Handler) -> Handler:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass

    return run


@pytest.fixture
async def tls_lab(tmp_path: Path) -> AsyncIterator[TlsLab]:
    lab = TlsLab(tmp_path)
    try:
        yield lab
    finally:
        await lab.close()


def challenge_certificate(
    names: Sequence[x509.GeneralName],
    key_authorization: str | None,
    *,
    critical: bool = True,
    extension_value: bytes | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed tls-alpn-01 certificate: SANs ``names`` and (unless ``key_authorization`` is
    None) the acmeIdentifier extension, or ``extension_value`` as its raw value."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-tls-alpn-01 test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if key_authorization is not None or extension_value is not None:
        value = extension_value if extension_value is not None else acme_identifier_value(key_authorization or "")
        builder = builder.add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, value), critical=critical)
    return builder.sign(key, hashes.SHA256()), key


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database (migrations use asyncio.run: run them on their own thread)."""
    path: Path = tmp_path_factory.mktemp("validator-db") / "acme-ra.db"
    url = f"sqlite+aiosqlite:///{path}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade, url).result()
    return url
