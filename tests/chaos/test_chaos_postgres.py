"""PostgreSQL restarted under load (the chaos session's own instance), the way an operator's
restart goes: a smart shutdown first (new connections refused, "the database system is shutting
down", while open sessions finish), then a fast one (sessions terminated), a few seconds down,
then started again. While the database is away the frontend answers 503 with Retry-After, never
a 500; the validators and the signer retry their jobs; every order ends valid, one certificate
each."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from .lab import ChaosLab, assert_nothing_lost

pytestmark = pytest.mark.integration

ORDERS = 30
ACCOUNTS = 5
# Orders start this far apart: the 30 starts span 9 s, so that orders begin before, during and
# after the outage (an order takes well under a second when nothing fails).
STAGGER_SECONDS = 0.3
# Smart shutdown (new connections refused), then fast shutdown and this long down (seconds).
SMART_SECONDS = 2.0
DOWN_SECONDS = 4.0
ORDER_TIMEOUT_SECONDS = 150.0
TEST_TIMEOUT_SECONDS = 240


async def test_postgres_restarted_mid_load(chaos: ChaosLab) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=2)
        load.order_timeout = ORDER_TIMEOUT_SECONDS
        clients = await load.accounts(ACCOUNTS)
        run = chaos.spawn(load.run(clients, ORDERS, "p", stagger=STAGGER_SECONDS))
        await asyncio.sleep(ORDERS * STAGGER_SECONDS / 2)

        operator = await asyncpg.connect(chaos.postgres.psql_url(), timeout=10)  # an open session
        try:
            await asyncio.to_thread(chaos.postgres.begin_smart_shutdown)
            chaos.figures.fault(f"PostgreSQL smart shutdown: new connections refused for {SMART_SECONDS:g}s")
            await asyncio.sleep(SMART_SECONDS)
        finally:
            await asyncio.to_thread(chaos.postgres.stop, "fast")
            operator.terminate()
        chaos.figures.fault(f"PostgreSQL fast shutdown (sessions terminated), down for {DOWN_SECONDS:g}s")
        await asyncio.sleep(DOWN_SECONDS)
        await asyncio.to_thread(chaos.postgres.start)
        chaos.figures.fault("PostgreSQL started again")
        failures = await run
        figures = chaos.settle()
        figures.extra.update(chaos.log_counts())

    assert figures.unavailable > 0, "no client request met the outage"
    assert_nothing_lost(figures, failures)
