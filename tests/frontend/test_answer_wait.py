"""A challenge POST or a finalize answers once the work is done (waiting.py): with the outcome the
event carries (no read of the row), or the row read again when the event carries none (an older
publisher); without an event, "processing" + Retry-After after the wait."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509

from acme_ra import bus
from acme_ra.db.lifecycle import record_challenge_outcome, store_certificate
from tests.conformance.client import TestAcmeClient, b64, make_csr
from tests.frontend.test_checklist import ready_order
from tests.frontend.test_policy_profiles_ari import issue_test_certificate

WAIT = 1.0


@pytest.fixture
def waiting(http: httpx.AsyncClient) -> Iterator[None]:
    state = http.app.state.ra  # type: ignore[attr-defined]
    saved = state.settings
    state.settings = saved.model_copy(update={"answer_wait_seconds": WAIT})
    yield
    state.settings = saved


async def pending_challenge(account: TestAcmeClient, name: str) -> str:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
    authz = await account.post(reply.body["authorizations"][0])
    return str(next(c for c in authz.body["challenges"] if c["type"] == "http-01")["url"])


@contextlib.asynccontextmanager
async def worker_answering(state: Any, subject: str,
                           answer: Callable[[str], Awaitable[bus.Event]]) -> AsyncIterator[None]:
    """A stand-in for the validator or the signer: every job on ``subject`` is answered by
    publishing ``answer(its challenge or order id)``."""
    async def on_job(message: Any) -> None:
        job = json.loads(message.data)
        event = await answer(job.get("challenge_id") or job["order_id"])
        await state.nc.publish(f"acme.events.{event.kind}", event.model_dump_json().encode())

    subscription = await state.nc.subscribe(subject, cb=on_job)
    try:
        yield
    finally:
        await subscription.unsubscribe()


async def test_an_event_with_its_outcome_is_the_answer(account: TestAcmeClient, http: httpx.AsyncClient,
                                                       waiting: None) -> None:
    """The validator's event carries the outcome it committed: the frontend answers with it and
    reads nothing (here nothing was committed, so a read would have said "processing")."""
    state = http.app.state.ra  # type: ignore[attr-defined]
    validated = dt.datetime(2026, 11, 28, 12, 0, 7, 250000, tzinfo=dt.UTC)

    async def validated_then(challenge_id: str) -> bus.Event:
        return bus.Event(kind="validated", challenge_id=challenge_id, status="valid", validated=validated)

    async with worker_answering(state, bus.SUBJECT_VALIDATE, validated_then):
        posted = await account.post(await pending_challenge(account, "wait-outcome.example.org"), {})
    assert posted.body["status"] == "valid" and posted.body["validated"] == "2026-11-28T12:00:07Z", posted.text
    assert "retry-after" not in posted.headers
    again = await account.post(posted.body["url"])  # the database, which nobody changed
    assert again.body["status"] == "processing"


async def test_a_failed_event_answers_the_problem_it_carries(account: TestAcmeClient, http: httpx.AsyncClient,
                                                             waiting: None) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    order = await ready_order(account, http, ["wait-failed.example.org"])
    problem = {"type": "rejectedIdentifier", "detail": "the upstream refused it"}  # as stored (lifecycle.fail_order)

    async def failed(order_id: str) -> bus.Event:
        return bus.Event(kind="failed", order_id=order_id, status="invalid", error=problem)

    async with worker_answering(state, bus.SUBJECT_ISSUE, failed):
        csr, _ = make_csr(["wait-failed.example.org"])
        finalized = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    assert finalized.body["status"] == "invalid", finalized.text
    assert finalized.body["error"]["type"] == "urn:ietf:params:acme:error:rejectedIdentifier"
    assert finalized.body["error"]["detail"] == problem["detail"]
    assert "certificate" not in finalized.body


async def test_challenge_answered_valid_once_validated(account: TestAcmeClient, http: httpx.AsyncClient,
                                                       waiting: None) -> None:
    """An older validator's event (the status only): the row read again is the answer."""
    state = http.app.state.ra  # type: ignore[attr-defined]

    async def recorded_then(challenge_id: str) -> bus.Event:  # records the outcome, then says so
        async with state.db.transaction() as session:
            await record_challenge_outcome(session, challenge_id, None, dt.timedelta(days=30))
        return bus.Event(kind="validated", challenge_id=challenge_id, status="valid")

    async with worker_answering(state, bus.SUBJECT_VALIDATE, recorded_then):
        url = await pending_challenge(account, "wait-valid.example.org")
        started = time.monotonic()
        posted = await account.post(url, {})
    assert posted.status == 200 and posted.body["status"] == "valid", posted.text
    assert "retry-after" not in posted.headers and posted.body["validated"]
    assert time.monotonic() - started < WAIT
    assert state.work_events.waiting == 0


async def test_no_event_answers_processing_after_the_wait(account: TestAcmeClient, http: httpx.AsyncClient,
                                                          waiting: None) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    url = await pending_challenge(account, "wait-none.example.org")
    started = time.monotonic()
    posted = await account.post(url, {})
    assert WAIT <= time.monotonic() - started < WAIT + 1
    assert posted.body["status"] == "processing" and int(posted.headers["retry-after"]) >= 1
    assert state.work_events.waiting == 0


async def test_an_event_for_a_row_not_done_still_answers_the_row(account: TestAcmeClient, http: httpx.AsyncClient,
                                                                 waiting: None) -> None:
    """A stray or early event without its outcome: the answer is what the database says."""
    state = http.app.state.ra  # type: ignore[attr-defined]

    async def liar(challenge_id: str) -> bus.Event:
        return bus.Event(kind="validated", challenge_id=challenge_id, status="valid")

    async with worker_answering(state, bus.SUBJECT_VALIDATE, liar):
        posted = await account.post(await pending_challenge(account, "wait-liar.example.org"), {})
    assert posted.body["status"] == "processing" and posted.headers["retry-after"]


async def test_finalize_answered_valid_with_the_certificate_once_issued(
    account: TestAcmeClient, http: httpx.AsyncClient, waiting: None
) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    order = await ready_order(account, http, ["wait-issued.example.org"])

    async def stored_then(order_id: str) -> bus.Event:  # stores a certificate, then says so
        pem = issue_test_certificate(["wait-issued.example.org"])
        cert = x509.load_pem_x509_certificate(pem.encode())
        async with state.db.transaction() as session:
            await store_certificate(session, order_id, pem, format(cert.serial_number, "x"),
                                    cert.not_valid_before_utc, cert.not_valid_after_utc)
        return bus.Event(kind="issued", order_id=order_id, status="valid")

    async with worker_answering(state, bus.SUBJECT_ISSUE, stored_then):
        csr, _ = make_csr(["wait-issued.example.org"])
        finalized = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    assert finalized.status == 200 and finalized.body["status"] == "valid", finalized.text
    assert "retry-after" not in finalized.headers
    downloaded = await account.post(finalized.body["certificate"])
    assert downloaded.status == 200 and downloaded.text.startswith("-----BEGIN CERTIFICATE-----")


async def test_a_refused_request_leaves_no_wait_behind(account: TestAcmeClient, http: httpx.AsyncClient,
                                                       waiting: None) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    order = await ready_order(account, http, ["wait-refused.example.org"])
    csr, _ = make_csr(["another-name.example.org"])
    refused = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    assert refused.status == 400 and refused.problem_type == "badCSR"
    assert state.work_events.waiting == 0
