"""kill -9 a validator mid-validation: the jobs it held come back (JetStream redelivers them one
ack wait after their last heartbeat) to the other validator or to the killed one restarted;
every order ends valid."""

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
TEST_TIMEOUT_SECONDS = 120
# The kill waits until the victim holds at least this many validations.
MIN_HELD_AT_KILL = 4


async def test_validator_killed_mid_validation_another_finishes(chaos: ChaosLab) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=2)
        clients = await load.accounts(ACCOUNTS)
        chaos.challenges.delay = SLOW_SECONDS
        run = chaos.spawn(load.run(clients, ORDERS, "v"))

        # The victim: whichever validator holds the most validations, once it holds a few.
        validators = chaos.deployment.running("validator")
        async with httpx.AsyncClient(trust_env=False, timeout=3) as http:
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, "no validator ever held validations"
                await asyncio.sleep(0.05)
                holding = {
                    service.name: metric((await http.get(service.health_url.replace("/readyz", "/metrics"))).text,
                                         "acme_ra_validator_jobs_in_flight")
                    for service in validators
                }
                victim = max(validators, key=lambda service: holding[service.name])
                held = holding[victim.name]
                if held >= MIN_HELD_AT_KILL and chaos.challenges.in_flight:
                    break
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

    assert held > 0
    assert_nothing_lost(figures, failures)
