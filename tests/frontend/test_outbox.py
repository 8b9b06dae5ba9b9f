"""The frontend's outbox: a job whose publish failed is published again within seconds, in order,
with its own message id; jobs are never tried while NATS is away, and old ones go to the reconciler."""

from __future__ import annotations

import asyncio

import pytest

from acme_ra import bus
from acme_ra_frontend import outbox as outbox_module
from acme_ra_frontend.outbox import Outbox


class FakeNats:
    def __init__(self) -> None:
        self.up = True
        self.fail_next = 0
        self.published: list[tuple[str, str]] = []

    async def publish(self, subject: str, job: object, msg_id: str, traceparent: str | None) -> None:
        if not self.up:
            raise ConnectionError("nats: connection closed")
        if self.fail_next:
            self.fail_next -= 1
            raise TimeoutError("nats: timeout")
        self.published.append((subject, msg_id))


def job(n: int) -> tuple[str, bus.ValidateJob, str, None]:
    return bus.SUBJECT_VALIDATE, bus.ValidateJob(challenge_id=f"c{n}"), f"validate-c{n}", None


async def test_a_reachable_nats_gets_the_job_at_once() -> None:
    nats = FakeNats()
    box = Outbox(nats.publish, lambda: nats.up)
    assert await box.publish(*job(1)) is True
    assert nats.published == [(bus.SUBJECT_VALIDATE, "validate-c1")] and len(box) == 0


async def test_a_failed_publish_is_retried_in_order_with_the_same_message_id() -> None:
    nats = FakeNats()
    box = Outbox(nats.publish, lambda: nats.up)
    nats.fail_next = 1
    assert await box.publish(*job(1)) is False
    # While one job waits, later ones queue behind it (none overtakes another).
    assert await box.publish(*job(2)) is False
    assert nats.published == [] and len(box) == 2
    await box.flush_once()
    assert nats.published == [(bus.SUBJECT_VALIDATE, "validate-c1"), (bus.SUBJECT_VALIDATE, "validate-c2")]
    assert len(box) == 0 and box.published_later == 2


async def test_nothing_is_tried_while_nats_is_disconnected() -> None:
    nats = FakeNats()
    nats.up = False
    tried: list[str] = []

    async def publish(subject: str, job: object, msg_id: str, traceparent: str | None) -> None:
        tried.append(msg_id)

    box = Outbox(publish, lambda: nats.up)
    assert await box.publish(*job(1)) is False
    await box.flush_once()
    assert tried == [] and len(box) == 1
    nats.up = True
    await box.flush_once()
    assert tried == ["validate-c1"] and len(box) == 0


async def test_the_retry_loop_publishes_once_nats_is_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "BACKOFF_SECONDS", (0.01, 0.02))
    nats = FakeNats()
    nats.up = False
    box = Outbox(nats.publish, lambda: nats.up)
    runner = asyncio.create_task(box.run())
    try:
        await box.publish(*job(1))
        await asyncio.sleep(0.1)
        assert nats.published == []
        nats.up = True
        for _ in range(100):
            if nats.published:
                break
            await asyncio.sleep(0.01)
        assert nats.published == [(bus.SUBJECT_VALIDATE, "validate-c1")] and len(box) == 0
    finally:
        runner.cancel()


async def test_a_job_held_too_long_is_left_to_the_reconciler() -> None:
    now = [1000.0]
    nats = FakeNats()
    nats.up = False
    box = Outbox(nats.publish, lambda: nats.up, clock=lambda: now[0])
    await box.publish(*job(1))
    now[0] += outbox_module.GIVE_UP_SECONDS + 1
    await box.publish(*job(2))
    nats.up = True
    await box.flush_once()
    assert nats.published == [(bus.SUBJECT_VALIDATE, "validate-c2")]
    assert box.given_up == 1 and box.published_later == 1
