"""The reconciler publishes a stuck job again a bounded number of times, counting in the row, then
ends the challenge (its authorization and order) or the order invalid; a queue with jobs still
waiting their turn is left alone. The frontend in process, a real nats-server."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from nats.js import JetStreamContext
from sqlalchemy import select, update

from acme_ra import bus
from acme_ra.db.models import Authorization, Challenge, Order, UpstreamOrder, utcnow
from acme_ra_frontend.reconciler import reconcile_once
from acme_ra_frontend.state import FrontendState
from tests.conformance.client import TestAcmeClient


async def drain(js: JetStreamContext, subject: str, durable: str) -> list[tuple[str, str]]:
    """Take and ack every job waiting on ``durable`` (as a validator that lost them would);
    (message id, job) of each."""
    subscription = await js.pull_subscribe(subject, durable=durable, stream=bus.JOBS_STREAM)
    taken: list[tuple[str, str]] = []
    try:
        while True:
            try:
                messages = await subscription.fetch(500, timeout=0.5)
            except TimeoutError:
                return taken
            for message in messages:
                taken.append(((message.headers or {}).get("Nats-Msg-Id", ""), message.data.decode()))
                await message.ack()
    finally:
        await subscription.unsubscribe()


async def processing_challenge(account: TestAcmeClient, name: str) -> tuple[str, str, str]:
    """(order id, authorization id, challenge id) of an http-01 challenge the client answered."""
    order = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
    authz = await account.post(order.body["authorizations"][0])
    challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
    assert (await account.post(challenge["url"], {})).body["status"] == "processing"
    return (order.location or "").rsplit("/", 1)[1], order.body["authorizations"][0].rsplit("/", 1)[1], \
        challenge["url"].rsplit("/", 1)[1]


def frontend_state(account: TestAcmeClient) -> FrontendState:
    return account.http.app.state.ra  # type: ignore[attr-defined, no-any-return]


async def age(state: FrontendState, model: Any, row_id: str, **values: Any) -> None:
    """The row last changed five minutes ago: past every reconciler deadline."""
    async with state.db.transaction() as session:
        await session.execute(update(model).where(model.id == row_id).values(
            updated_at=utcnow() - dt.timedelta(minutes=5), **values))


async def row(state: FrontendState, model: Any, row_id: str) -> Any:
    async with state.db.transaction() as session:
        return (await session.execute(select(model).where(model.id == row_id))).scalar_one()


async def test_a_lost_validation_is_published_again_then_given_up(
    account: TestAcmeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = frontend_state(account)
    monkeypatch.setattr(state.settings, "reconcile_max_republications", 2)
    order_id, authz_id, challenge_id = await processing_challenge(account, "lost.reconcile.example.org")
    await drain(state.js, bus.SUBJECT_VALIDATE, bus.DURABLE_VALIDATOR)  # the job is lost

    for attempt in (1, 2):
        await age(state, Challenge, challenge_id)
        await reconcile_once(state)
        assert (await row(state, Challenge, challenge_id)).republished == attempt
        jobs = await drain(state.js, bus.SUBJECT_VALIDATE, bus.DURABLE_VALIDATOR)
        assert (f"validate-{challenge_id}-r{attempt}", bus.ValidateJob(challenge_id=challenge_id).model_dump_json()) \
            in jobs
        await reconcile_once(state)  # published a moment ago: not due again yet
        assert (await row(state, Challenge, challenge_id)).republished == attempt

    await age(state, Challenge, challenge_id)
    await reconcile_once(state)
    challenge = await row(state, Challenge, challenge_id)
    assert challenge.status == "invalid"
    assert challenge.error == {
        "type": "serverInternal",
        "detail": "the validation job was published 3 times and never completed; it is not tried again",
    }
    assert (await row(state, Authorization, authz_id)).status == "invalid"
    order = await row(state, Order, order_id)
    assert order.status == "invalid" and order.error == challenge.error
    assert not [job for job in await drain(state.js, bus.SUBJECT_VALIDATE, bus.DURABLE_VALIDATOR)
                if challenge_id in job[1]]

    await age(state, Challenge, challenge_id)
    await reconcile_once(state)  # nothing more: it is no longer processing
    assert not [job for job in await drain(state.js, bus.SUBJECT_VALIDATE, bus.DURABLE_VALIDATOR)
                if challenge_id in job[1]]


async def test_a_queue_with_jobs_waiting_is_left_alone(account: TestAcmeClient) -> None:
    state = frontend_state(account)
    _, _, challenge_id = await processing_challenge(account, "queued.reconcile.example.org")
    await drain(state.js, bus.SUBJECT_VALIDATE, bus.DURABLE_VALIDATOR)
    await age(state, Challenge, challenge_id)
    # Another job waits its turn: the stuck one may be waiting too (a backlog, not a loss).
    await bus.publish_job(state.js, bus.SUBJECT_VALIDATE, bus.ValidateJob(challenge_id="another"), "validate-another")
    await reconcile_once(state)
    assert (await row(state, Challenge, challenge_id)).republished == 0

    await drain(state.js, bus.SUBJECT_VALIDATE, bus.DURABLE_VALIDATOR)
    await reconcile_once(state)
    assert (await row(state, Challenge, challenge_id)).republished == 1


async def test_a_lost_issuance_is_published_again_then_given_up(
    account: TestAcmeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = frontend_state(account)
    monkeypatch.setattr(state.settings, "reconcile_max_republications", 1)
    order_id, _, _ = await processing_challenge(account, "issue.reconcile.example.org")
    await drain(state.js, bus.SUBJECT_ISSUE, bus.DURABLE_SIGNER)
    await age(state, Order, order_id, status="processing")

    await reconcile_once(state)
    assert (await row(state, Order, order_id)).republished == 1
    jobs = await drain(state.js, bus.SUBJECT_ISSUE, bus.DURABLE_SIGNER)
    assert (f"issue-{order_id}-r1", bus.IssueJob(order_id=order_id).model_dump_json()) in jobs

    await age(state, Order, order_id)
    await reconcile_once(state)
    order = await row(state, Order, order_id)
    assert order.status == "invalid"
    assert order.error == {
        "type": "serverInternal",
        "detail": "the issuance job was published 2 times and never completed; it is not tried again",
    }
    assert not [job for job in await drain(state.js, bus.SUBJECT_ISSUE, bus.DURABLE_SIGNER) if order_id in job[1]]


async def test_an_issuance_given_up_carries_its_upstreams_last_failure(
    account: TestAcmeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signer kept the upstream's last transient failure with the upstream order (network,
    account, DNS): the order given up says it first, then why it is not tried again."""
    state = frontend_state(account)
    monkeypatch.setattr(state.settings, "reconcile_max_republications", 0)
    order_id, _, _ = await processing_challenge(account, "upstream-down.reconcile.example.org")
    await drain(state.js, bus.SUBJECT_ISSUE, bus.DURABLE_SIGNER)
    failure = {"type": "serverInternal",
               "detail": 'upstream "certinext": https://ca.example/dir unreachable: ConnectError: refused'}
    async with state.db.transaction() as session:
        session.add(UpstreamOrder(order_id=order_id, upstream="certinext", error=failure))
    await age(state, Order, order_id, status="processing")

    await reconcile_once(state)
    order = await row(state, Order, order_id)
    assert order.status == "invalid"
    assert order.error == {
        "type": "serverInternal",
        "detail": 'upstream "certinext": https://ca.example/dir unreachable: ConnectError: refused '
        "(the issuance job was published 1 times and never completed; it is not tried again)",
    }
