"""Multi-perspective corroboration end to end: a primary validator and remote perspectives as
processes, each perspective with its own DNS server; a hijacked perspective is one whose DNS
answers the hijacker's address for the name, where the wrong key authorization is served.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nats.aio.msg import Msg
from sqlalchemy import select

from acme_ra import bus, perspectives
from acme_ra.db.engine import Database
from acme_ra.db.models import Challenge
from tests.validator.rows import PendingOrder, insert_pending_order

from .conftest import HIJACK_ADDRESS, REAL_ADDRESS, REGIONS, MpicLab, Web, wait_for_outcome

pytestmark = pytest.mark.integration

PATH = "/.well-known/acme-challenge/"
# Generous: the machine may be busy; the lab's primary is given a 40 s deadline.
OUTCOME_TIMEOUT_SECONDS = 90.0


async def _start(lab: MpicLab, perspectives: int, remote: int, deadline: float = 40.0) -> None:
    names = [f"p{i + 1}" for i in range(perspectives)]
    for name in names:
        lab.resolver(name)
    lab.resolver("primary")
    started = [lab.start_perspective(name, REGIONS[i]) for i, name in enumerate(names)]
    started.append(lab.start_primary(remote, deadline))
    await asyncio.gather(*(process.ready() for process in started))
    await lab.processes["primary"].heard(perspectives)


async def _validate(lab: MpicLab, web: Web, domain: str, hijacked: set[str]) -> tuple[PendingOrder, Database]:
    lab.point(domain, hijacked)
    db = Database(lab.database_url)
    rows = await insert_pending_order(db, domain)
    web.real.routes[PATH + rows.token] = (200, {}, rows.key_authorization.encode())
    web.hijack.routes[PATH + rows.token] = (200, {}, b"the hijacker's answer")
    nc = await lab.operator()
    try:
        job = bus.ValidateJob(challenge_id=rows.challenge_id, order_id=rows.order_id)
        await bus.publish_job(nc.jetstream(), bus.SUBJECT_VALIDATE, job, f"validate-{rows.challenge_id}")
    finally:
        await nc.close()
    return rows, db


async def _status(db: Database, challenge_id: str) -> str:
    async with db.sessions() as session:
        return str((await session.execute(select(Challenge.status).where(Challenge.id == challenge_id))).scalar_one())


def _by_name(record: Any) -> dict[str, dict[str, Any]]:
    return {result["name"]: result for result in record["perspectives"]}


async def test_one_hijacked_perspective_of_three_is_outvoted(mpic_lab: tuple[MpicLab, Web]) -> None:
    lab, web = mpic_lab
    await _start(lab, 3, 3)
    rows, db = await _validate(lab, web, "one.mpic.test", {"p1"})
    try:
        outcome = await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)
    finally:
        await db.dispose()
    assert outcome["status"] == "valid", outcome
    record = outcome["record"]
    assert isinstance(record, dict) and record["quorum"] == "2/3" and record["required"] == 2
    results = _by_name(record)
    assert set(results) == {"p1", "p2", "p3"}
    assert results["p1"]["outcome"] == "invalid" and results["p1"]["addresses"] == [HIJACK_ADDRESS]
    assert results["p1"]["problem"]["type"] == "unauthorized" and results["p1"]["region"] == "arin"
    assert all(results[name]["outcome"] == "valid" and results[name]["addresses"] == [REAL_ADDRESS]
               for name in ("p2", "p3"))
    assert record["primary"]["outcome"] == "valid" and record["primary"]["addresses"] == [REAL_ADDRESS]
    # The hijacker was asked by p1 only; the real server by the primary, p2 and p3.
    assert len([path for path, _ in web.hijack.requests if path == PATH + rows.token]) == 1
    page = await lab.processes["primary"].metrics()
    assert 'acme_ra_mpic_perspective_results_total{outcome="unauthorized",perspective="p1"} 1.0' in page
    assert 'acme_ra_mpic_perspective_results_total{outcome="valid",perspective="p2"} 1.0' in page
    log = lab.processes["primary"].log_path.read_text()
    assert "corroboration done" in log and "2/3" in log


async def test_two_hijacked_perspectives_of_three_make_it_invalid(mpic_lab: tuple[MpicLab, Web]) -> None:
    lab, web = mpic_lab
    await _start(lab, 3, 3)
    rows, db = await _validate(lab, web, "two.mpic.test", {"p1", "p2"})
    try:
        outcome = await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)
    finally:
        await db.dispose()
    assert outcome["status"] == "invalid", outcome
    error = outcome["error"]
    assert isinstance(error, dict) and error["type"] == "unauthorized" and "corroboration" in error["detail"]
    record = outcome["record"]
    assert isinstance(record, dict) and record["quorum"] in ("0/3", "1/3")
    results = _by_name(record)
    assert results["p1"]["outcome"] == results["p2"]["outcome"] == "invalid"


async def test_one_stopped_perspective_of_three_still_valid(mpic_lab: tuple[MpicLab, Web]) -> None:
    lab, web = mpic_lab
    await _start(lab, 3, 3)
    # Heard alive by the primary, then gone: its request finds no responder (or no answer).
    lab.processes["p3"].stop()
    rows, db = await _validate(lab, web, "stopped.mpic.test", set())
    try:
        outcome = await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)
    finally:
        await db.dispose()
    assert outcome["status"] == "valid", outcome
    record = outcome["record"]
    assert isinstance(record, dict) and record["quorum"] == "2/3"
    results = _by_name(record)
    assert results["p1"]["outcome"] == results["p2"]["outcome"] == "valid"
    assert "p3" not in results or results["p3"]["outcome"] == "unavailable"


async def test_four_perspectives_one_may_fail(mpic_lab: tuple[MpicLab, Web]) -> None:
    lab, web = mpic_lab
    await _start(lab, 4, 4)
    rows, db = await _validate(lab, web, "four.mpic.test", {"p4"})
    try:
        outcome = await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)
    finally:
        await db.dispose()
    assert outcome["status"] == "valid", outcome
    record = outcome["record"]
    assert isinstance(record, dict) and record["quorum"] == "3/4" and record["required"] == 3
    assert _by_name(record)["p4"]["outcome"] == "invalid"


async def test_four_perspectives_two_failing_is_invalid(mpic_lab: tuple[MpicLab, Web]) -> None:
    lab, web = mpic_lab
    await _start(lab, 4, 4)
    rows, db = await _validate(lab, web, "fourtwo.mpic.test", {"p3", "p4"})
    try:
        outcome = await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)
    finally:
        await db.dispose()
    assert outcome["status"] == "invalid", outcome


async def test_too_few_alive_is_invalid_after_the_deadline_never_valid(mpic_lab: tuple[MpicLab, Web]) -> None:
    lab, web = mpic_lab
    deadline = 12.0
    await _start(lab, 1, 3, deadline=deadline)  # one perspective alive, three asked, two needed
    started = time.monotonic()
    rows, db = await _validate(lab, web, "few.mpic.test", set())
    try:
        # Still processing while the deadline runs (asked again meanwhile), never valid.
        await asyncio.sleep(deadline / 3)
        assert await _status(db, rows.challenge_id) == "processing"
        outcome = await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)
    finally:
        await db.dispose()
    assert time.monotonic() - started >= deadline - 1
    assert outcome["status"] == "invalid", outcome
    error = outcome["error"]
    assert isinstance(error, dict) and "Too few network perspectives" in error["detail"]
    record = outcome["record"]
    assert isinstance(record, dict) and record["rounds"] > 1 and record["quorum"] == "1/3"
    assert 'acme_ra_mpic_decisions_total{result="too_few"} 1.0' in await lab.processes["primary"].metrics()


async def test_a_reply_not_bound_to_its_request_is_dropped(mpic_lab: tuple[MpicLab, Web]) -> None:
    """A rogue on the bus, heard as perspective "rogue" (ripe), answers "valid" with another
    request's id: dropped. With it, p1 (arin) alone would span 2 regions and pass (2 asked,
    1 may fail); without it, too few: invalid at the deadline."""
    lab, web = mpic_lab
    await _start(lab, 1, 2, deadline=8.0)
    nc = await lab.operator()
    stop = asyncio.Event()

    async def answer(message: Msg) -> None:
        request = perspectives.PerspectiveCheckRequest.model_validate_json(message.data)
        reply = perspectives.PerspectiveCheckReply(request_id="not-" + request.request_id, perspective="rogue",
                                                   region="ripe", outcome="valid")
        await message.respond(reply.model_dump_json().encode())

    async def beat() -> None:
        data = perspectives.PerspectiveHeartbeat(name="rogue", region="ripe").model_dump_json().encode()
        while not stop.is_set():
            await nc.publish(perspectives.heartbeat_subject("rogue"), data)
            await asyncio.sleep(1)

    await nc.subscribe(perspectives.check_subject("rogue"), cb=answer)
    beating = asyncio.create_task(beat())
    try:
        await lab.processes["primary"].heard(2)
        rows, db = await _validate(lab, web, "rogue.mpic.test", set())
        try:
            outcome = await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)
        finally:
            await db.dispose()
    finally:
        stop.set()
        await beating
        await nc.close()
    assert outcome["status"] == "invalid", outcome
    record = outcome["record"]
    assert isinstance(record, dict)
    results = _by_name(record)
    assert results["p1"]["outcome"] == "valid"
    assert results["rogue"]["outcome"] == "unavailable"
    assert results["rogue"]["problem"]["detail"] == "answer not bound to the request"
    assert "perspective reply not bound to its request" in lab.processes["primary"].log_path.read_text()
