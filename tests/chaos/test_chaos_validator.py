"""kill -9 a validator mid-validation: the jobs it held come back (JetStream redelivers them after
the ack wait) to the other validator or to the killed one restarted; every order ends valid."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .lab import ChaosLab, assert_nothing_lost, metric

pytestmark = pytest.mark.integration

ORDERS = 24
ACCOUNTS = 4
# The challenge server answers after this long, so that the kill lands mid-check (seconds).
SLOW_SECONDS = 2.0
# Redelivery of a job held by a dead validator (the chaos consumer's ack wait; production: 60 s).
ACK_WAIT_SECONDS = 5.0
TEST_TIMEOUT_SECONDS = 120


async def test_validator_killed_mid_validation_another_finishes(chaos: ChaosLab) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=2, validate_ack_wait=ACK_WAIT_SECONDS)
        clients = await load.accounts(ACCOUNTS)
        chaos.challenges.delay = SLOW_SECONDS
        run = chaos.spawn(load.run(clients, ORDERS, "v"))

        victim = chaos.deployment.running("validator")[0]
        held = 0.0
        async with httpx.AsyncClient(trust_env=False, timeout=3) as http:
            deadline = time.monotonic() + 30
            while held == 0:
                assert time.monotonic() < deadline, "the validator never had a job in flight"
                await asyncio.sleep(0.05)
                held = metric((await http.get(victim.health_url.replace("/readyz", "/metrics"))).text,
                              "acme_ra_validator_jobs_in_flight")
        fetching = chaos.challenges.in_flight
        await asyncio.to_thread(victim.kill)
        chaos.figures.fault(f"kill -9 {victim.name} with {held:g} validations in flight "
                            f"({fetching} challenge fetches being answered)")
        chaos.figures.extra["validations in flight at the kill"] = held
        await asyncio.sleep(1)
        restarted = await asyncio.to_thread(chaos.deployment.start, "validator")
        chaos.figures.fault(f"{restarted.name} started in its place")

        failures = await run
        chaos.challenges.delay = 0
        figures = chaos.settle()

    assert_nothing_lost(figures, failures)
    # The kill did land mid-validation: those challenges were fetched again after the redelivery.
    assert figures.extra["validations repeated (tokens fetched twice)"] >= 1
