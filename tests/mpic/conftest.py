"""A multi-perspective lab of real processes: a nats-server with acme-ra's users (natsauth), a
primary validator (``python -m acme_ra_validator``) and remote perspectives
(``ACME_RA_VALIDATOR_ROLE=remote``), each perspective with a DNS server of its own (dnslib) that
answers the real address (127.0.0.1) or a hijacker's (127.0.0.2) for the same name, and an
http-01 server on both addresses, the hijacker's serving the wrong key authorization.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import pytest
from dnslib import QTYPE, RR
from dnslib.server import DNSLogger, DNSServer
from nats.aio.client import Client as NATS

from acme_ra import bus, natsauth
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra_tools.supervisor import free_port, nats_server_binary
from tests.support.database import fresh_database
from tests.validator.conftest import LAB_ALLOW_NETWORKS, HttpLab, ZoneResolver

REAL_ADDRESS = "127.0.0.1"
HIJACK_ADDRESS = "127.0.0.2"
REGIONS = ("arin", "ripe", "apnic", "lacnic")
# Generous: the machine running the tests may be busy.
READY_TIMEOUT_SECONDS = 60.0


@dataclass
class Resolver:
    """One perspective's DNS server: every name it is told about answers ``address``."""

    zone: ZoneResolver
    server: DNSServer
    address: str = REAL_ADDRESS

    @property
    def listen(self) -> str:
        host, port = self.server.server.server_address[:2]
        return f"{host}:{port}"

    def point(self, name: str, address: str) -> None:
        """``name``'s A record answers ``address`` (its other records stay)."""
        key = name.lower().rstrip(".") + "."
        others = [rr for rr in self.zone.records.get(key, []) if rr.rtype != QTYPE.A]
        self.zone.records[key] = others + list(RR.fromZone(f"{name}. 0 A {address}"))


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    listen: str

    async def ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        async with httpx.AsyncClient(trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"{self.name} exited:\n{self.log_path.read_text()}")
                try:
                    if (await client.get(f"http://{self.listen}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        pytest.fail(f"{self.name} never ready:\n{self.log_path.read_text()}")

    async def heard(self, count: int) -> None:
        """Wait until this primary has heard ``count`` live perspectives (its metrics say)."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while f"acme_ra_mpic_live_perspectives {float(count)}" not in await self.metrics():
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} never heard {count} perspectives:\n{self.log_path.read_text()}")
            await asyncio.sleep(0.3)

    async def metrics(self) -> str:
        async with httpx.AsyncClient(trust_env=False) as client:
            return (await client.get(f"http://{self.listen}/metrics")).text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class MpicLab:
    workdir: Path
    nats_url: str
    auth_dir: Path
    database_url: str
    http_port: int
    # The hub's leaf node port: a remote site's nats-server connects there (docs/perspectives.md).
    leaf_port: int = 0
    resolvers: dict[str, Resolver] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)

    def resolver(self, name: str) -> Resolver:
        if name not in self.resolvers:
            zone = ZoneResolver()
            server = DNSServer(zone, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _line: None))
            server.start_thread()
            self.resolvers[name] = Resolver(zone, server)
        return self.resolvers[name]

    def point(self, domain: str, hijacked: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Every resolver answers the real address for ``domain``; those of ``hijacked`` the hijacker's."""
        for name, resolver in self.resolvers.items():
            resolver.point(domain, HIJACK_ADDRESS if name in hijacked else REAL_ADDRESS)

    def _start(self, name: str, role: str, extra: dict[str, str], nats_url: str | None = None) -> Process:
        """``nats_url``: another nats-server (a site's leaf node, no credentials) in place of the hub."""
        listen = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "ACME_RA_NATS_URL": nats_url or self.nats_url,
            **(natsauth.service_env(self.auth_dir, role) if nats_url is None else {}),
            "ACME_RA_VALIDATOR_LISTEN": listen,
            "ACME_RA_VALIDATION_HTTP_PORT": str(self.http_port),
            "ACME_RA_VALIDATION_ALLOW_NETWORKS": LAB_ALLOW_NETWORKS,
            "ACME_RA_DNS_RESOLVERS": self.resolver(name).listen,
            "ACME_RA_STATE_DIR": str(self.workdir / name),
            "ACME_RA_VALIDATION_TIMEOUT_SECONDS": "10",
            **extra,
        }
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "acme_ra_validator"], env=env, stdout=log_file,
                                       stderr=subprocess.STDOUT)
        self.processes[name] = Process(name, process, log_path, listen)
        return self.processes[name]

    def start_perspective(self, name: str, region: str, nats_url: str | None = None) -> Process:
        return self._start(name, "perspective", {"ACME_RA_VALIDATOR_ROLE": "remote",
                                                 "ACME_RA_VALIDATOR_PERSPECTIVE": name,
                                                 "ACME_RA_VALIDATOR_REGION": region}, nats_url)

    def start_primary(self, remote: int, deadline: float = 40.0, **extra: str) -> Process:
        return self._start("primary", "validator", {"ACME_RA_DATABASE_URL": self.database_url,
                                                     "ACME_RA_MPIC_REMOTE_PERSPECTIVES": str(remote),
                                                     "ACME_RA_MPIC_DEADLINE_SECONDS": str(deadline), **extra})

    async def operator(self) -> NATS:
        return await nats.connect(self.nats_url, **natsauth.user_options(self.auth_dir, natsauth.OPERATOR))

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()
        for resolver in self.resolvers.values():
            resolver.server.stop()
            resolver.server.server.server_close()


@pytest.fixture(scope="module")
def mpic_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database (SQLite, or PostgreSQL under ACME_RA_TEST_DATABASE_URL)."""
    with fresh_database(tmp_path_factory.mktemp("mpic-db")) as url:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(upgrade, url).result()
        yield url


@pytest.fixture
def nats_with_users(tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    """A JetStream nats-server with acme-ra's users and permissions (acme_ra.natsauth), taking
    leaf node connections on a port of its own (docs/perspectives.md)."""
    auth_dir = tmp_path / "nats-auth"
    config = natsauth.write_server_config(auth_dir)
    leaf_port = free_port()
    hub = tmp_path / "hub.conf"
    hub.write_text(config.read_text() + f"leafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\n")
    port = free_port()
    process = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(hub), "-js", "-sd", str(tmp_path / "nats"), "-a", "127.0.0.1",
         "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"nats://127.0.0.1:{port}", auth_dir, leaf_port
    finally:
        process.terminate()
        process.wait(10)


async def _serve_on(lab: HttpLab, host: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(lab.serve, host, port)


@dataclass
class Web:
    """The http-01 server at the real address and the hijacker's at the same port."""

    real: HttpLab
    hijack: HttpLab


@pytest.fixture
async def mpic_lab(
    tmp_path: Path, nats_with_users: tuple[str, Path, int], mpic_database: str
) -> AsyncIterator[tuple[MpicLab, Web]]:
    nats_url, auth_dir, leaf_port = nats_with_users
    real, hijack = HttpLab(), HttpLab()
    real_server = await _serve_on(real, REAL_ADDRESS, 0)
    port = real_server.sockets[0].getsockname()[1]
    hijack_server = await _serve_on(hijack, HIJACK_ADDRESS, port)
    real.port = hijack.port = port
    lab = MpicLab(tmp_path, nats_url, auth_dir, mpic_database, port, leaf_port)
    # The streams and consumers, as the frontend or signer would make them (a validator may not).
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            nc = await lab.operator()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        await bus.ensure_streams(nc.jetstream())
    finally:
        await nc.close()
    try:
        yield lab, Web(real, hijack)
    finally:
        lab.stop()
        for server in (real_server, hijack_server):
            server.close()
            await server.wait_closed()


async def wait_for_outcome(db: Database, challenge_id: str, timeout: float) -> dict[str, object]:
    """The challenge row once it is no longer processing."""
    from sqlalchemy import select

    from acme_ra.db.models import Challenge

    deadline = time.monotonic() + timeout
    while True:
        async with db.sessions() as session:
            row = (await session.execute(select(Challenge).where(Challenge.id == challenge_id))).scalar_one()
        if row.status != "processing":
            return {"status": row.status, "error": row.error, "record": row.validation_record}
        if time.monotonic() > deadline:
            pytest.fail(f"challenge {challenge_id} still processing after {timeout} s")
        await asyncio.sleep(0.3)
