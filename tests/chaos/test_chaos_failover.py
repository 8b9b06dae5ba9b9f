"""PostgreSQL failing over under load, as Patroni or CloudNativePG do it: a primary and a
streaming standby of it (``pg_basebackup -R``), the services given both through one multi-host
URL (``h1:p1,h2:p2 ... target_session_attrs=read-write``), the primary killed with SIGKILL
mid-load (every process of it: the machine is gone), a few seconds with no primary (what a
failover manager takes to decide), then the standby promoted (``pg_ctl promote``).

The services must find the new primary by themselves: no restart, no configuration change. While
there is none, the frontend answers 503 with Retry-After, never a 500; the validators' and the
signer's jobs are redelivered by JetStream and complete. At the end every order is valid with
one certificate, Pebble issued exactly one per order, and the serial each client downloaded is
the one the database holds for its order.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from acme_ra.config import ENV_PREFIX
from tests.support.dns_server import TestDnsServer
from tests.support.postgres import PostgresServer
from tests.upstream.pebble import require_pebble

from .conftest import kept
from .lab import ChaosLab, assert_nothing_lost, migrate, run_sql
from .load import waits

pytestmark = pytest.mark.integration

ORDERS = 36
ACCOUNTS = 6
# Orders start this far apart: the 36 starts span 9 s, so that orders begin before, during and
# after the failover, and some are at every step of theirs when the primary dies.
STAGGER_SECONDS = 0.25
# No primary for this long between the kill and the promotion (seconds).
NO_PRIMARY_SECONDS = 4.0
# Synchronous replication, as Patroni's synchronous_mode and CloudNativePG's synchronous replicas
# run it: a commit returns once the standby has it. Asynchronous replication loses the last
# commits at a failover (measured here: 1 order of 36 back to 'processing' on the new primary,
# its certificate issued by the CA and downloaded by its client, unknown to the database).
# Made synchronous once the standby streams (a commit would wait forever before). The standby has
# no standby of its own: once promoted it must not wait for one.
SYNCHRONOUS = {"synchronous_commit": "on"}
# Each http-01 fetch answered this late: validations are under way in the validators when the
# primary dies, their results' writes fail and JetStream redelivers the jobs (seconds).
CHALLENGE_DELAY_SECONDS = 1.0
ORDER_TIMEOUT_SECONDS = 150.0
TEST_TIMEOUT_SECONDS = 220


class Pair:
    """A primary and its streaming standby; ``remove()`` stops and deletes both."""

    def __init__(self, workdir: Path) -> None:
        self.database = f"failover_{secrets.token_hex(4)}"
        self.primary = PostgresServer(prefix="acme-ra-chaos-primary-", settings=SYNCHRONOUS)
        self.standby: PostgresServer | None = None
        self.primary.start()
        run_sql(self.primary.psql_url(), f'CREATE DATABASE "{self.database}"')
        (workdir / "migrate").mkdir()
        migrate(self.primary.url(self.database), workdir / "migrate")
        self.standby = self.primary.standby(prefix="acme-ra-chaos-standby-", settings=SYNCHRONOUS)
        self.standby.start()
        run_sql(self.primary.psql_url(), "ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()")

    def url(self) -> str:
        """The services' one URL: both servers, the primary first; asyncpg keeps the one that
        takes writes."""
        assert self.standby is not None
        return (f"postgresql+asyncpg://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
                f"/{self.database}?target_session_attrs=read-write")

    def remove(self) -> None:
        for server in (self.primary, self.standby):
            if server is not None:
                server.remove()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    servers = Pair(tmp_path)
    try:
        yield servers
    finally:
        servers.remove()


@pytest.fixture
async def failover(request: pytest.FixtureRequest, tmp_path: Path, pair: Pair,
                   test_dns: TestDnsServer) -> AsyncIterator[ChaosLab]:
    require_pebble()
    lab = ChaosLab(request.node.name.removeprefix("test_"), tmp_path, pair.primary, pair.database,
                   test_dns.resolver_setting)
    lab.env[f"{ENV_PREFIX}DATABASE_URL"] = pair.url()
    lab.deployment.env = dict(lab.env)
    async with kept(request, lab):
        yield lab


async def test_postgres_primary_killed_and_standby_promoted_mid_load(failover: ChaosLab, pair: Pair) -> None:
    chaos = failover
    standby = pair.standby
    assert standby is not None
    assert await asyncio.to_thread(standby.in_recovery), "the standby is not streaming from the primary"
    replication = run_sql(pair.primary.psql_url(), "SELECT sync_state FROM pg_stat_replication")[0]
    assert [row["sync_state"] for row in replication] == ["sync"], replication
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        chaos.challenges.delay = CHALLENGE_DELAY_SECONDS
        load = await chaos.start(validators=2)
        load.order_timeout = ORDER_TIMEOUT_SECONDS
        clients = await load.accounts(ACCOUNTS)
        run = chaos.spawn(load.run(clients, ORDERS, "f", stagger=STAGGER_SECONDS))
        await asyncio.sleep(ORDERS * STAGGER_SECONDS / 2)

        await asyncio.to_thread(pair.primary.kill)
        killed = time.monotonic()
        chaos.figures.fault("kill -9 the PostgreSQL primary (postmaster and every backend)")
        await asyncio.sleep(NO_PRIMARY_SECONDS)
        await asyncio.to_thread(standby.promote)
        promoted = time.monotonic()
        chaos.figures.fault(f"standby promoted (pg_ctl promote) {promoted - killed:.1f}s after the kill")
        chaos.postgres = standby  # where the counts are read from now
        failures = await run
        figures = chaos.settle()
        figures.extra.update(chaos.log_counts())
        figures.extra.update(waits(load.timeline, killed, promoted))

    assert not await asyncio.to_thread(standby.in_recovery)
    assert figures.unavailable > 0, "no client request met the failover"
    assert_nothing_lost(figures, failures)
    stored = run_sql(chaos.database_url, "SELECT order_id, serial FROM certificates")[0]
    serials = {row["order_id"]: int(row["serial"], 16) for row in stored}
    downloaded = {url.rsplit("/", 1)[1]: leaf.serial_number for url, leaf in load.certificates.items()}
    assert len(downloaded) == ORDERS
    assert downloaded == serials, "a client downloaded a certificate the database does not hold for its order"

