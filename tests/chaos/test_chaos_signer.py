"""kill -9 the signer after the upstream orders were created (Pebble upstream, behind a slow link
so that the kill lands mid-issuance): a new signer process resumes each recorded upstream order
once the dead one's lease has run out; exactly one certificate per order, at Pebble and in the
database."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.tcp_proxy import TcpProxy

from .lab import ChaosLab, assert_nothing_lost, run_sql

pytestmark = pytest.mark.integration

ORDERS = 8
ACCOUNTS = 2
# Added to every chunk between the signer and Pebble: an issuance then takes seconds.
LINK_DELAY_SECONDS = 0.15
TEST_TIMEOUT_SECONDS = 200


async def test_signer_killed_after_the_upstream_orders_were_created(chaos: ChaosLab) -> None:
    link = TcpProxy(chaos.pebble.port)
    chaos.extra_stops.append(link.stop)
    chaos.upstream_through(link.port)
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start()
        load.order_timeout = 150
        clients = await load.accounts(ACCOUNTS)
        link.delay = LINK_DELAY_SECONDS
        run = chaos.spawn(load.run(clients, ORDERS, "s"))

        query = "SELECT state, url IS NOT NULL AS recorded FROM upstream_orders"
        deadline = time.monotonic() + 90
        while True:
            rows = (await asyncio.to_thread(run_sql, chaos.database_url, query))[0]
            if sum(row["recorded"] for row in rows) >= ORDERS // 2:
                break
            assert time.monotonic() < deadline, f"upstream orders not created in time: {rows}"
            await asyncio.sleep(0.05)
        signer = chaos.deployment.running("signer")[0]
        await asyncio.to_thread(signer.kill)
        states = (await asyncio.to_thread(run_sql, chaos.database_url, "SELECT state FROM upstream_orders"))[0]
        left = {state: [r["state"] for r in states].count(state) for state in {r["state"] for r in states}}
        chaos.figures.fault(f"kill -9 {signer.name}: upstream orders left {left}")
        chaos.figures.extra["upstream orders at the kill"] = left
        assert set(left) & {"pending", "finalizing", "processing"}, left

        link.delay = 0.0
        restarted = await asyncio.to_thread(chaos.deployment.start, "signer")
        chaos.figures.fault(f"{restarted.name} started in its place")
        failures = await run
        await asyncio.sleep(1)  # anything still in flight would have issued by now
        figures = chaos.settle()

    assert_nothing_lost(figures, failures)
    # Only an upstream order never finalized (newOrder answered, URL not yet recorded) is replaced.
    replaced = figures.extra["upstream orders replaced (never finalized)"]
    assert figures.extra["upstream orders created"] == ORDERS + replaced
