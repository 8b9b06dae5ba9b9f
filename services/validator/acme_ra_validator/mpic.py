"""Multi-perspective corroboration on the primary (CA/B Forum BR 3.2.2.9; Boulder's remote VAs).

With ``ACME_RA_MPIC_REMOTE_PERSPECTIVES=N`` (N > 0) the primary validator that took a job runs
its own check and, in parallel, asks N distinct live remote perspectives (acme_ra.perspectives:
discovered by their heartbeats, chosen to span as many regions as there are) for the same check.
The challenge is valid when the primary passes and at least ``Settings.mpic_required_passes``
remote perspectives pass (the BR table: 2-5 remote, 1 may fail; 6 or more, 2; or
``ACME_RA_MPIC_QUORUM``) spanning ``Settings.mpic_min_regions`` regions.

Too few answers to decide (perspectives down or not yet heard of) is no answer: the check asks
again every ``RETRY_SECONDS`` while the challenge stays processing, and only at
``ACME_RA_MPIC_DEADLINE_SECONDS`` ends it invalid, saying so. Never valid on too few.

Every perspective's result (name, region, addresses, outcome, problem) and the quorum ("2/3")
go into the challenge's ``validation_record`` before its outcome is stored, into the log, and
into ``acme_ra_mpic_perspective_results_total{perspective, outcome}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from sqlalchemy import Table, bindparam, update

from acme_ra import perspectives
from acme_ra.config import Settings
from acme_ra.db.models import Challenge, ChallengeStatus
from acme_ra_validator.checker import check_once
from acme_ra_validator.worker import ChallengeToCheck, ChallengeValidator

log = logging.getLogger("acme_ra_validator.mpic")

# Wait between two rounds of asking when too few perspectives answered (seconds).
RETRY_SECONDS = 2.0
# What a primary waits for a perspective's answer beyond the validation timeout (seconds).
REPLY_MARGIN_SECONDS = 5.0
# The primary's name in validation records when ACME_RA_VALIDATOR_PERSPECTIVE is unset.
PRIMARY_NAME = "primary"

PERSPECTIVE_RESULTS = Counter(
    "acme_ra_mpic_perspective_results_total",
    "Remote perspective results seen by this primary, by perspective and outcome "
    "(valid, a problem type, or unavailable).",
    ["perspective", "outcome"],
)
QUORUM_DECISIONS = Counter(
    "acme_ra_mpic_decisions_total",
    "Corroboration decisions (valid, invalid, too_few).",
    ["result"],
)

LIVE_PERSPECTIVES = Gauge(
    "acme_ra_mpic_live_perspectives",
    "Remote perspectives this primary heard from within the heartbeat expiry (alert when below "
    "ACME_RA_MPIC_REMOTE_PERSPECTIVES).",
)

Outcome = Literal["valid", "invalid", "unavailable"]


@dataclass(frozen=True)
class PerspectiveResult:
    name: str
    region: str
    outcome: Outcome
    problem: dict[str, Any] | None = None
    addresses: list[str] = field(default_factory=list)

    def to_data(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "outcome": self.outcome, "problem": self.problem,
                "addresses": self.addresses}

    @property
    def label(self) -> str:
        if self.outcome == "invalid" and self.problem:
            return str(self.problem.get("type", "invalid"))
        return self.outcome


@dataclass(frozen=True)
class Decision:
    verdict: Literal["valid", "invalid", "undecided"]
    quorum: str
    problem: dict[str, Any] | None = None


def decide(results: list[PerspectiveResult], asked: int, required: int, min_regions: int) -> Decision:
    """The quorum rule over the remote results so far (missing ones count as unavailable)."""
    passed = [r for r in results if r.outcome == "valid"]
    failed = [r for r in results if r.outcome == "invalid"]
    regions = {r.region for r in passed}
    quorum = f"{len(passed)}/{asked}"
    if len(passed) >= required and len(regions) >= min_regions:
        return Decision("valid", quorum)
    unavailable = asked - len(passed) - len(failed)
    if len(failed) > asked - required:
        first = failed[0].problem or {}
        detail = (f"During corroboration from {asked} network perspectives, {len(failed)} disagreed "
                  f"({len(passed)}/{asked} passed, {required} needed); {failed[0].name}: {first.get('detail', '')}")
        return Decision("invalid", quorum, {"type": first.get("type", "unauthorized"), "detail": detail})
    if len(passed) >= required and unavailable == 0:
        return Decision("invalid", quorum, {"type": "unauthorized", "detail": (
            f"The network perspectives that passed span {len(regions)} region(s), {min_regions} needed")})
    return Decision("undecided", quorum)


def too_few(decision: Decision, asked: int, required: int, live: int) -> dict[str, Any]:
    return {"type": "serverInternal", "detail": (
        f"Too few network perspectives to corroborate the validation before its deadline: "
        f"{decision.quorum} passed, {required} of {asked} needed ({live} perspective(s) alive)")}


class PerspectiveDirectory:
    """The live remote perspectives, from their heartbeats: name -> (region, last heard)."""

    def __init__(self) -> None:
        self.heard: dict[str, tuple[str, float]] = {}
        LIVE_PERSPECTIVES.set_function(lambda: len(self.live()))

    async def subscribe(self, nc: NATS) -> None:
        await nc.subscribe(perspectives.SUBJECT_HEARTBEATS, cb=self._on_heartbeat)

    async def _on_heartbeat(self, message: Msg) -> None:
        try:
            beat = perspectives.PerspectiveHeartbeat.model_validate_json(message.data)
        except ValidationError:
            return
        if message.subject != perspectives.heartbeat_subject(beat.name) or beat.region not in perspectives.REGIONS:
            return  # a heartbeat speaking for another name
        self.heard[beat.name] = (beat.region, time.monotonic())

    def live(self) -> dict[str, str]:
        """name -> region of the perspectives heard within HEARTBEAT_EXPIRY_SECONDS."""
        oldest = time.monotonic() - perspectives.HEARTBEAT_EXPIRY_SECONDS
        return {name: region for name, (region, heard) in self.heard.items() if heard >= oldest}


def choose(live: dict[str, str], count: int) -> list[tuple[str, str]]:
    """Up to ``count`` distinct perspectives, one region after another (the widest spread), at
    random within a region."""
    by_region: dict[str, list[str]] = defaultdict(list)
    for name, region in live.items():
        by_region[region].append(name)
    for names in by_region.values():
        random.shuffle(names)
    regions = list(by_region)
    random.shuffle(regions)
    chosen: list[tuple[str, str]] = []
    while len(chosen) < count and any(by_region.values()):
        for region in regions:
            if by_region[region] and len(chosen) < count:
                chosen.append((by_region[region].pop(), region))
    return chosen


def _record_statement() -> Any:
    challenges = cast(Table, Challenge.__table__)
    return (
        update(challenges)
        .where(challenges.c.id == bindparam("p_challenge_id"), challenges.c.status == ChallengeStatus.processing.value)
        .values(validation_record=bindparam("p_record"))
    )


_RECORD = _record_statement()


class Corroboration:
    """The primary's side: ``validate`` replaces ``ChallengeValidator.validate`` when MPIC is on."""

    def __init__(self, settings: Settings) -> None:
        self.asked = settings.mpic_remote_perspectives
        self.required = settings.mpic_required_passes
        self.min_regions = settings.mpic_min_regions
        self.deadline_seconds = settings.mpic_deadline_seconds
        self.name = settings.validator_perspective or PRIMARY_NAME
        self.region = settings.validator_region
        self.directory = PerspectiveDirectory()
        self.nc: NATS | None = None

    async def subscribe(self, nc: NATS) -> None:
        self.nc = nc
        await self.directory.subscribe(nc)

    async def validate(self, validator: ChallengeValidator, challenge: ChallengeToCheck) -> dict[str, Any] | None:
        """The primary's check and the remote perspectives' quorum: None when valid, else a
        problem as data; the validation record stored first. Never raises but for the database."""
        started = time.monotonic()
        deadline = started + self.deadline_seconds
        primary = asyncio.create_task(check_once(validator.http, validator.resolver, validator.options, challenge))
        rounds = 0
        while True:
            rounds += 1
            live = self.directory.live()
            results = await self._ask(validator, challenge, choose(live, self.asked), deadline)
            decision = decide(results, self.asked, self.required, self.min_regions)
            primary_failed = primary.done() and primary.result()[0] is not None
            remaining = deadline - time.monotonic()
            if decision.verdict != "undecided" or primary_failed or remaining <= 0:
                break
            log.info("too few perspectives answered; asking again", extra={
                "challenge_id": challenge.challenge_id, "quorum": decision.quorum, "live": len(live)})
            await asyncio.sleep(min(RETRY_SECONDS, remaining))  # the last round comes at the deadline
        primary_problem, primary_addresses = await primary
        problem = primary_problem
        if problem is None and decision.verdict == "invalid":
            problem = decision.problem
        elif problem is None and decision.verdict == "undecided":
            problem = too_few(decision, self.asked, self.required, len(live))
        verdict = "valid" if problem is None else ("too_few" if decision.verdict == "undecided" else "invalid")
        own = PerspectiveResult(self.name, self.region, "valid" if primary_problem is None else "invalid",
                                primary_problem, primary_addresses)
        record = {"quorum": decision.quorum, "required": self.required, "regions_min": self.min_regions,
                  "rounds": rounds, "primary": own.to_data(), "perspectives": [r.to_data() for r in results]}
        async with validator.db.autocommit() as conn:
            await conn.execute(_RECORD, {"p_challenge_id": challenge.challenge_id, "p_record": record})
        QUORUM_DECISIONS.labels(verdict).inc()
        for result in results:
            PERSPECTIVE_RESULTS.labels(result.name, result.label).inc()
            log.info("perspective result", extra={
                "challenge_id": challenge.challenge_id, "perspective": result.name, "region": result.region,
                "result": result.label, "addresses": result.addresses})
        log.info("corroboration done", extra={
            "challenge_id": challenge.challenge_id, "quorum": decision.quorum, "required": self.required,
            "result": verdict, "rounds": rounds, "duration_ms": round((time.monotonic() - started) * 1000, 1)})
        return problem

    async def _ask(
        self, validator: ChallengeValidator, challenge: ChallengeToCheck, chosen: list[tuple[str, str]],
        deadline: float,
    ) -> list[PerspectiveResult]:
        """Ask every chosen perspective at once and wait for every answer (or its timeout): the
        record is audit evidence, so it holds what each one saw, not only the first quorum."""
        timeout = max(1.0, min(validator.options.timeout_seconds + REPLY_MARGIN_SECONDS, deadline - time.monotonic()))
        return list(await asyncio.gather(*(self._ask_one(validator, challenge, name, region, timeout)
                                           for name, region in chosen)))

    async def _ask_one(
        self, validator: ChallengeValidator, challenge: ChallengeToCheck, name: str, region: str, timeout: float
    ) -> PerspectiveResult:
        assert self.nc is not None
        options = validator.options
        request = perspectives.PerspectiveCheckRequest(
            request_id=secrets.token_urlsafe(16), perspective=name, challenge_id=challenge.challenge_id,
            type=challenge.type, token=challenge.token, identifier_type=challenge.identifier_type,
            identifier_value=challenge.identifier_value, wildcard=challenge.wildcard,
            account_id=challenge.account_id, key_thumbprint=challenge.key_thumbprint,
            provisioner=challenge.provisioner, caa_identities=list(options.caa_identities),
            external_url=options.external_url, persist_issuer_domains=list(options.persist_issuer_domains),
        )
        try:
            message = await self.nc.request(perspectives.check_subject(name), request.model_dump_json().encode(),
                                            timeout=timeout)
            reply = perspectives.PerspectiveCheckReply.model_validate_json(message.data)
        except (NoRespondersError, NatsTimeoutError, TimeoutError):
            return PerspectiveResult(name, region, "unavailable", {"type": "serverInternal", "detail": "no answer"})
        except ValidationError:
            return PerspectiveResult(name, region, "unavailable", {"type": "serverInternal",
                                                                   "detail": "unreadable answer"})
        if reply.request_id != request.request_id or reply.perspective != name:
            log.warning("perspective reply not bound to its request: dropped", extra={
                "perspective": name, "answered_as": reply.perspective})
            return PerspectiveResult(name, region, "unavailable", {"type": "serverInternal",
                                                                   "detail": "answer not bound to the request"})
        return PerspectiveResult(name, reply.region, reply.outcome, reply.problem, reply.addresses)
