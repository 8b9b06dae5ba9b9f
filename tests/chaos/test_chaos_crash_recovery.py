"""A crash costs seconds, not minutes (issue 18): mid-load, kill -9 a validator holding
validations, then the signer holding issuances, and start each again. The jobs they held come
back one ack wait (bus.VALIDATE/ISSUE_ACK_WAIT_SECONDS, 10 s) after their last heartbeat, the
signer's upstream orders are resumed once its lease (10 s) has run out, and no client waits
more than 30 s for its validation or its certificate (lego gives up after 30 s, certbot 90 s).

Before: with 60 s and 120 s ack waits, a validator and the signer killed 3 s into a load of 80
orders in the lab left one order ``processing`` for over 60 s, and its client gave up."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.support.tcp_proxy import TcpProxy

from .lab import ChaosLab, assert_nothing_lost, metric
from .processes import Service

pytestmark = pytest.mark.integration

ORDERS = 40
ACCOUNTS = 4
# Orders start this far apart, so that new ones keep coming through both kills (seconds).
STAGGER_SECONDS = 0.1
# The challenge server answers after this long, and every chunk between the signer and Pebble
# is delayed this long, until the kill: so that each kill lands on jobs in flight (seconds).
SLOW_CHALLENGE_SECONDS = 2.0
SLOW_LINK_SECONDS = 0.15
# Each kill waits until its victim holds at least this many jobs.
VALIDATIONS_AT_KILL = 3
ISSUANCES_AT_KILL = 2
# The longest a client may wait for its validation or its certificate (lego's 30 s).
CLIENT_WAIT_SECONDS = 30.0
# From a kill until every order that was waiting on that kind of job is done: the redelivery
# (one ack wait after the last heartbeat), the job itself, and the client's next poll; for the
# signer, a retry or two while the dead signer's lease runs out (seconds).
VALIDATIONS_RECOVERED_SECONDS = 15.0
ISSUANCES_RECOVERED_SECONDS = 20.0
TEST_TIMEOUT_SECONDS = 240


async def held(service: Service, gauge: str) -> float:
    async with httpx.AsyncClient(trust_env=False, timeout=3) as http:
        return metric((await http.get(service.health_url.replace("/readyz", "/metrics"))).text, gauge)


async def wait_until_held(services: list[Service], gauge: str, at_least: int, timeout: float) -> tuple[Service, float]:
    """The service holding the most jobs once one holds ``at_least``, and how many it holds."""
    deadline = time.monotonic() + timeout
    while True:
        holding = {service.name: await held(service, gauge) for service in services}
        victim = max(services, key=lambda service: holding[service.name])
        if holding[victim.name] >= at_least:
            return victim, holding[victim.name]
        assert time.monotonic() < deadline, f"never {at_least} jobs in flight: {holding}"
        await asyncio.sleep(0.05)


async def test_validator_and_signer_killed_mid_load_cost_seconds(chaos: ChaosLab) -> None:
    link = TcpProxy(chaos.pebble.port)
    chaos.extra_stops.append(link.stop)
    chaos.upstream_through(link.port)
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=2)
        clients = await load.accounts(ACCOUNTS)
        chaos.challenges.delay = SLOW_CHALLENGE_SECONDS
        link.delay = SLOW_LINK_SECONDS
        run = chaos.spawn(load.run(clients, ORDERS, "c", stagger=STAGGER_SECONDS))

        # kill -9 the validator holding the most validations; another starts in its place.
        validator, validations = await wait_until_held(
            chaos.deployment.running("validator"), "acme_ra_validator_jobs_in_flight", VALIDATIONS_AT_KILL, 60)
        await asyncio.to_thread(validator.kill)
        validator_killed = time.monotonic()
        chaos.challenges.delay = 0
        chaos.figures.fault(f"kill -9 {validator.name} holding {validations:g} validations")
        waiting_validation = [name for name, marks in load.timeline.items()
                              if "answered" in marks and "validated" not in marks]
        restarts = [chaos.spawn(asyncio.to_thread(chaos.deployment.start, "validator"))]

        # kill -9 the signer once it holds issuances; another starts in its place.
        signer, issuances = await wait_until_held(
            chaos.deployment.running("signer"), "acme_ra_signer_jobs_in_flight", ISSUANCES_AT_KILL, 90)
        await asyncio.to_thread(signer.kill)
        signer_killed = time.monotonic()
        link.delay = 0.0
        chaos.figures.fault(f"kill -9 {signer.name} holding {issuances:g} issuances")
        waiting_issuance = [name for name, marks in load.timeline.items()
                            if "finalized" in marks and "issued" not in marks]
        restarts.append(chaos.spawn(asyncio.to_thread(chaos.deployment.start, "signer")))

        failures = await run
        await asyncio.gather(*restarts)
        figures = chaos.settle()

    timeline = load.timeline
    validation_waits = [m["validated"] - m["answered"] for m in timeline.values() if "validated" in m]
    issuance_waits = [m["issued"] - m["finalized"] for m in timeline.values() if "issued" in m and "finalized" in m]
    validations_recovered = max((timeline[n].get("validated", float("inf")) - validator_killed
                                 for n in waiting_validation), default=0.0)
    issuances_recovered = max((timeline[n].get("issued", float("inf")) - signer_killed
                               for n in waiting_issuance), default=0.0)
    figures.extra.update({
        "orders waiting on a validation at the validator's kill": len(waiting_validation),
        "orders waiting on an issuance at the signer's kill": len(waiting_issuance),
        "seconds from the validator's kill until those were validated": round(validations_recovered, 1),
        "seconds from the signer's kill until those were issued": round(issuances_recovered, 1),
        "longest client wait for a validation (s)": round(max(validation_waits, default=0.0), 1),
        "longest client wait for a certificate (s)": round(max(issuance_waits, default=0.0), 1),
    })

    assert_nothing_lost(figures, failures)
    assert waiting_validation and waiting_issuance, figures.extra
    assert len(validation_waits) == len(issuance_waits) == ORDERS, figures.extra
    assert max(validation_waits) <= CLIENT_WAIT_SECONDS, figures.extra
    assert max(issuance_waits) <= CLIENT_WAIT_SECONDS, figures.extra
    assert validations_recovered <= VALIDATIONS_RECOVERED_SECONDS, figures.extra
    assert issuances_recovered <= ISSUANCES_RECOVERED_SECONDS, figures.extra
