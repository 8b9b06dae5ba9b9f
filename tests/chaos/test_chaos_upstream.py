"""The upstream CA (Pebble) unreachable for 30 s under load: connections to it are refused and
open ones reset (a cuttable proxy in front of Pebble: a stopped Pebble would forget every order).
Clients see their orders ``processing`` with Retry-After, never an error; once the upstream is
back every order ends valid with exactly one certificate."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.tcp_proxy import TcpProxy

from .lab import ChaosLab, assert_nothing_lost, run_sql

pytestmark = pytest.mark.integration

ORDERS = 12
ACCOUNTS = 3
OUTAGE_SECONDS = 30.0
ORDER_TIMEOUT_SECONDS = 150.0
TEST_TIMEOUT_SECONDS = 240


async def test_upstream_unreachable_for_30_seconds(chaos: ChaosLab) -> None:
    upstream = TcpProxy(chaos.pebble.port)
    chaos.extra_stops.append(upstream.stop)
    chaos.upstream_through(upstream.port)
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start()
        load.order_timeout = ORDER_TIMEOUT_SECONDS
        clients = await load.accounts(ACCOUNTS)
        await asyncio.to_thread(upstream.cut)
        chaos.figures.fault(f"upstream cut (connections refused, open ones reset) for {OUTAGE_SECONDS:g}s")
        cut_at = time.monotonic()
        run = chaos.spawn(load.run(clients, ORDERS, "u"))

        # Every order reaches finalize and waits, processing, while the upstream is away.
        query = "SELECT status, count(*) AS n FROM orders GROUP BY status"
        while time.monotonic() - cut_at < OUTAGE_SECONDS:
            await asyncio.sleep(1)
        statuses = {r["status"]: r["n"] for r in (await asyncio.to_thread(run_sql, chaos.database_url, query))[0]}
        chaos.figures.extra["orders at the end of the outage"] = statuses
        await asyncio.to_thread(upstream.restore)
        chaos.figures.fault("upstream back")
        failures = await run
        chaos.figures.extra["seconds from the upstream's return to the last certificate"] = round(
            time.monotonic() - cut_at - OUTAGE_SECONDS, 1)
        figures = chaos.settle()
        figures.extra.update(chaos.log_counts())

    assert statuses == {"processing": ORDERS}, statuses
    assert figures.unavailable == 0
    assert_nothing_lost(figures, failures)
