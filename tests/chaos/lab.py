"""One chaos test's world: PostgreSQL (the session's instance, a fresh database), its own
nats-server (or 3-node cluster), Pebble as the upstream CA (EAB; optionally behind a proxy that
can be slowed or cut), an http-01 challenge server, and the acme-ra services as processes.

After the load, :meth:`ChaosLab.settle` counts from the database and from Pebble: orders valid,
orders lost, certificates beyond one per order (duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from acme_ra import bus, natsauth
from acme_ra.config import ENV_PREFIX
from acme_ra_tools.supervisor import free_port
from tests.support.lab import TEST_ZONE, base_environment
from tests.support.postgres import PostgresServer
from tests.upstream.pebble import Pebble, make_tls_material

from .load import ChallengeServer, Figures, Load
from .processes import Deployment, NatsCluster, NatsServer

SECRET = "chaos-tests-sealing-secret-0123456789abcdef"


def run_sql(url: str, *statements: str) -> list[list[asyncpg.Record]]:
    """Run SQL with asyncpg in a thread of its own (never disturbs the test's event loop)."""

    async def run() -> list[list[asyncpg.Record]]:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            return [await connection.fetch(statement) for statement in statements]
        finally:
            await connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run()).result()


def migrate(database_url: str, state_dir: Path) -> None:
    """``acme-ra migrate`` on ``database_url``, as an operator runs it."""
    env = base_environment() | {f"{ENV_PREFIX}DATABASE_URL": database_url, f"{ENV_PREFIX}STATE_DIR": str(state_dir)}
    done = subprocess.run([sys.executable, "-m", "acme_ra_tools.cli", "migrate"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed: {done.stderr[-3000:]}")


class ChaosLab:
    """What a chaos test starts, faults and counts; :meth:`stop` stops all of it."""

    def __init__(self, test: str, workdir: Path, postgres: PostgresServer, database: str, dns_resolver: str,
                 nats: NatsServer | NatsCluster | None = None) -> None:
        self.workdir = workdir
        self.figures = Figures(test)
        self.postgres = postgres
        self.database = database
        self.zone = f"{re.sub('[^a-z0-9]+', '-', test.lower())[:40].strip('-')}.{TEST_ZONE}"
        self.pebble = Pebble(workdir / "pebble")
        self.nats = nats or NatsServer(workdir)
        tls_ca, tls_cert, tls_key = make_tls_material(workdir / "frontend-tls")
        self.ca_bundle = tls_ca
        self.frontend_port = free_port()
        self.challenges = ChallengeServer(free_port())
        self.env = base_environment()
        self.env.update({
            f"{ENV_PREFIX}{key}": str(value) for key, value in {
                "STATE_DIR": workdir / "var",
                "DATABASE_URL": postgres.url(database),
                "NATS_URL": self.nats.url,
                "LISTEN": f"127.0.0.1:{self.frontend_port}",
                "EXTERNAL_URL": f"https://localhost:{self.frontend_port}",
                "TLS_CERT_FILE": tls_cert,
                "TLS_KEY_FILE": tls_key,
                "METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                "VALIDATOR_LISTEN": f"127.0.0.1:{free_port()}",
                "SIGNER_LISTEN": f"127.0.0.1:{free_port()}",
                "ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
                "VALIDATION_HTTP_PORT": self.challenges.server.server_address[1],
                "VALIDATION_TLS_PORT": free_port(),
                "VALIDATION_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
                "DNS_RESOLVERS": dns_resolver,
                "UPSTREAM": "acme",
                "UPSTREAM_DIRECTORY_URL": self.pebble.directory_url,
                "UPSTREAM_EAB_KID": self.pebble.eab_kid,
                "UPSTREAM_EAB_HMAC_KEY": self.pebble.eab_hmac_key,
                "UPSTREAM_CA_BUNDLE": self.pebble.ca_bundle,
                "UPSTREAM_HTTP_TIMEOUT_SECONDS": 10,
                "SECRET_KEY": SECRET,
                "RATE_NEW_ACCOUNTS_PER_IP_PER_HOUR": 1000,
                "LOG_LEVEL": "info",
            }.items()
        })
        self.env["PYTHONUNBUFFERED"] = "1"
        self.deployment = Deployment(workdir, self.env, self.ca_bundle, self.nats.auth_dir)
        self.load: Load | None = None
        self.started = time.monotonic()
        self.extra_stops: list[Any] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task of the test's, cancelled at the end whatever happens."""
        task = asyncio.create_task(work)
        self.tasks.append(task)
        return task

    @property
    def directory_url(self) -> str:
        return f"https://localhost:{self.frontend_port}/acme/acme/directory"

    @property
    def database_url(self) -> str:
        return self.postgres.psql_url(self.database)

    def upstream_through(self, port: int) -> None:
        """Point the signer at a proxy in front of Pebble (before the signer starts)."""
        self.env[f"{ENV_PREFIX}UPSTREAM_DIRECTORY_URL"] = f"https://127.0.0.1:{port}/dir"
        self.deployment.env = dict(self.env)

    def use_nats(self, nats: NatsServer | NatsCluster) -> None:
        """Another NATS (e.g. a cluster) for the services (before they start)."""
        self.nats = nats
        self.env[f"{ENV_PREFIX}NATS_URL"] = nats.url
        self.deployment.env = dict(self.env)
        self.deployment.nats_auth_dir = nats.auth_dir

    def log_counts(self) -> dict[str, int]:
        """How often the services logged what a fault makes them log."""
        text = "".join(path.read_text(errors="replace") for path in self.deployment.log_dir.glob("*.log"))
        return {
            "jobs held by the outbox (publish failed or NATS away)":
                text.count("not published, retrying shortly") + text.count("held until NATS answers"),
            "jobs published by the outbox after a retry": text.count("published after a retry"),
            "jobs left to the reconciler by the outbox": text.count("left to the reconciler after"),
            "reconciler passes that re-published": text.count("re-published stuck jobs"),
            "NATS disconnections seen by the services": text.count("nats: disconnected"),
            "jobs nak'ed for a retry": text.count("will be redelivered"),
        }

    async def operator_connection(self, name: str) -> NATS:
        """A connection as the NATS operator user (streams, consumers: what no service may do)."""
        return await bus.connect(self.nats.url, name, natsauth.user_options(self.nats.auth_dir, natsauth.OPERATOR))

    # Start-up ----------------------------------------------------------------------------------

    async def prepare_bus(self, replicas: int | None = None) -> None:
        """Streams and durable consumers made before any service starts, as production's
        (bus.ensure_streams, its ack waits included); with ``replicas`` for a cluster."""
        nc = await self.operator_connection("chaos-test-setup")
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 60
            while True:  # a fresh cluster takes a few seconds to elect its meta leader
                try:
                    await bus.ensure_streams(js, replicas=replicas)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()
        self.figures.extra["ack waits (validate, issue)"] = (
            f"{bus.VALIDATE_ACK_WAIT_SECONDS:g}s, {bus.ISSUE_ACK_WAIT_SECONDS:g}s")

    async def start(self, frontends: int = 1, validators: int = 1, signers: int = 1, **bus_options: Any) -> Load:
        """nats (unless running), the bus, then the services (the database is a copy of the
        session's migrated template); an open Load."""
        began = time.monotonic()
        if isinstance(self.nats, NatsCluster):
            if not all(node.child for node in self.nats.nodes):
                self.nats.start()
        elif self.nats.child is None:
            self.nats.start()
        await self.prepare_bus(**bus_options)
        kinds = ["signer"] * signers + ["validator"] * validators + ["frontend"] * frontends
        services = [self.deployment.start(kind, wait=False) for kind in kinds]
        for service in services:
            await asyncio.to_thread(self.deployment.wait_ready, service)
        self.load = Load(self.directory_url, self.ca_bundle, self.challenges, self.figures, self.zone)
        self.started = time.monotonic()
        self.figures.extra["start-up seconds"] = round(self.started - began, 1)
        return self.load

    # Accounting -----------------------------------------------------------------------------

    def settle(self) -> Figures:
        """Orders valid, lost and duplicated, from the database and Pebble, into the figures."""
        statuses, certificates, upstream = run_sql(
            self.database_url,
            "SELECT status, count(*) AS n FROM orders GROUP BY status",
            "SELECT count(*) AS n, count(DISTINCT order_id) AS orders FROM certificates",
            "SELECT coalesce(sum(orders_created), 0) AS created, count(*) FILTER (WHERE orders_created > 1) AS again "
            "FROM upstream_orders",
        )
        by_status = {row["status"]: row["n"] for row in statuses}
        figures = self.figures
        figures.valid = by_status.get("valid", 0)
        figures.lost = figures.orders - figures.valid
        issued = self.pebble.issued_count()
        figures.upstream_certificates = issued
        stored = certificates[0]["n"]
        figures.duplicates = (stored - certificates[0]["orders"]) + max(0, issued - stored)
        figures.extra["orders by status"] = by_status
        figures.extra["upstream orders created"] = upstream[0]["created"]
        figures.extra["upstream orders replaced (never finalized)"] = upstream[0]["again"]
        figures.extra["validations repeated (tokens fetched twice)"] = self.challenges.fetched_twice()
        figures.seconds = time.monotonic() - self.started
        return figures

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.load is not None:
            await self.load.close()

    def stop(self) -> None:
        for stop in self.extra_stops:
            with contextlib.suppress(Exception):  # keep stopping the rest
                stop()
        self.deployment.stop()
        self.nats.stop()
        self.pebble.stop()
        self.challenges.stop()


def metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (all label sets) in an exposition page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_nothing_lost(figures: Figures, failures: list[str], *, frontend_restarted: bool = False) -> None:
    """What every chaos test asks: every order valid, one certificate each, never a 500 or a
    hang, every 503 with Retry-After."""
    assert not failures, f"{len(failures)} orders failed, e.g. {failures[:3]}"
    assert figures.lost == 0, f"{figures.lost} orders lost: {figures.extra.get('orders by status')}"
    assert figures.duplicates == 0, f"{figures.duplicates} duplicate certificates"
    assert figures.upstream_certificates == figures.orders, (figures.upstream_certificates, figures.orders)
    assert figures.server_errors == 0, f"{figures.server_errors} responses 500: {figures.samples_500}"
    assert figures.hangs == 0, f"{figures.hangs} requests timed out"
    assert figures.unavailable_without_retry_after == 0
    if not frontend_restarted:
        assert figures.refused == 0, f"{figures.refused} connections refused"
        assert figures.dropped == 0, f"{figures.dropped} connections dropped before the answer"
