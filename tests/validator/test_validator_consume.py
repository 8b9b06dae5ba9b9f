"""``bus.consume`` as the validator runs it, against a real nats-server (JetStream): each job is
handed over the moment it comes, never more than ``concurrency`` at once, a pull request serves
several jobs, a failing job is nak'ed with backoff, an unreadable one terminated."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from acme_ra import bus

from .test_validator_service import Nats, nats_lab  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

Handler = Callable[[bus.ValidateJob, Msg], Awaitable[None]]


@pytest.fixture
async def jetstream(nats_lab: Nats) -> AsyncIterator[tuple[NATS, JetStreamContext]]:  # noqa: F811 - fixture
    nats_lab.start()
    nc = await bus.connect(nats_lab.url, "consume-test")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    yield nc, js
    await nc.close()


async def publish(js: JetStreamContext, name: str, data: bytes | None = None) -> None:
    if data is None:
        await bus.publish_job(js, bus.SUBJECT_VALIDATE, bus.ValidateJob(challenge_id=name), name)
    else:
        await js.publish(bus.SUBJECT_VALIDATE, data, headers={"Nats-Msg-Id": name})


async def consuming(
    js: JetStreamContext, handler: Handler, stop: asyncio.Event, concurrency: int
) -> asyncio.Task[None]:
    task = asyncio.create_task(bus.consume(js, bus.SUBJECT_VALIDATE, bus.DURABLE_VALIDATOR, bus.ValidateJob, handler,
                                           stop, concurrency=concurrency))
    await asyncio.sleep(0.2)  # its first pull request is waiting
    return task


async def test_jobs_that_trickle_in_start_at_once_and_share_pull_requests(
    jetstream: tuple[NATS, JetStreamContext],
) -> None:
    nc, js = jetstream
    published: dict[str, float] = {}
    waits: list[float] = []
    release, stop = asyncio.Event(), asyncio.Event()

    async def handle(job: bus.ValidateJob, msg: Msg) -> None:
        waits.append(time.monotonic() - published[job.challenge_id])
        await release.wait()  # every job stays in flight: none may wait for another to finish
        await msg.ack()

    task = await consuming(js, handle, stop, concurrency=16)
    sent_before = nc.stats["out_msgs"]
    for i in range(10):
        published[f"j{i}"] = time.monotonic()
        await publish(js, f"j{i}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert len(waits) == 10 and max(waits) < 0.25, waits
    pulls = nc.stats["out_msgs"] - sent_before - 10  # the publishes; no ack has gone yet
    assert pulls <= 2  # fetch(1) sent one per job
    release.set()
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_never_more_handlers_than_the_concurrency(jetstream: tuple[NATS, JetStreamContext]) -> None:
    _, js = jetstream
    running, most, done = 0, 0, 0
    stop = asyncio.Event()

    async def handle(job: bus.ValidateJob, msg: Msg) -> None:
        nonlocal running, most, done
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.1)
        running -= 1
        await msg.ack()
        done += 1
        if done == 7:
            stop.set()

    task = await consuming(js, handle, stop, concurrency=2)
    for i in range(7):
        await publish(js, f"k{i}")
    await asyncio.wait_for(task, 10)
    assert done == 7 and most == 2


async def test_a_failed_job_comes_back_after_the_backoff(jetstream: tuple[NATS, JetStreamContext]) -> None:
    _, js = jetstream
    deliveries: list[tuple[int, float]] = []
    stop = asyncio.Event()

    async def handle(job: bus.ValidateJob, msg: Msg) -> None:
        assert msg.metadata is not None
        deliveries.append((msg.metadata.num_delivered, time.monotonic()))
        if len(deliveries) == 1:
            raise RuntimeError("the database went away")
        await msg.ack()
        stop.set()

    task = await consuming(js, handle, stop, concurrency=4)
    await publish(js, "failing")
    await asyncio.wait_for(task, 10)
    assert [n for n, _ in deliveries] == [1, 2]
    assert deliveries[1][1] - deliveries[0][1] >= bus.REDELIVERY_BACKOFF_SECONDS[0] - 0.1


async def test_an_unreadable_job_is_terminated(jetstream: tuple[NATS, JetStreamContext]) -> None:
    _, js = jetstream
    handled: list[str] = []
    stop = asyncio.Event()

    async def handle(job: bus.ValidateJob, msg: Msg) -> None:
        handled.append(job.challenge_id)
        await msg.ack()
        if job.challenge_id == "after":
            stop.set()

    task = await consuming(js, handle, stop, concurrency=4)
    await publish(js, "garbage", b"not a job")
    await publish(js, "after")
    await asyncio.wait_for(task, 10)
    await asyncio.sleep(bus.REDELIVERY_BACKOFF_SECONDS[0] + 0.5)  # a nak would have brought it back by now
    info = await js.consumer_info(bus.JOBS_STREAM, bus.DURABLE_VALIDATOR)
    assert handled == ["after"]
    assert info.num_ack_pending == 0 and info.num_redelivered == 0 and info.num_pending == 0
