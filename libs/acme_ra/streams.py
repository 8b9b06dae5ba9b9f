"""The JetStream streams and durable consumers acme-ra's jobs and events use: created, or
brought in place to this release's settings, by the frontend and the signer at start-up
(``ensure_streams``); a validator waits for its consumer (``wait_for_consumer``).

In a NATS cluster the streams have ``replicas`` copies (ACME_RA_NATS_STREAM_REPLICAS, 3 for R3);
a stream that exists with another count is scaled in place, and the consumers, which leave their
own replica count unset, follow their stream. A cluster scaling a stream may answer late (a new
peer catches up before the change is acknowledged): the update is re-checked and retried for
``STREAM_UPDATE_SECONDS`` before the service gives up.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import APIError, NotFoundError

from acme_ra.bus import (
    DEDUP_WINDOW_SECONDS,
    DURABLE_SIGNER,
    DURABLE_VALIDATOR,
    EVENTS_STREAM,
    ISSUE_ACK_WAIT_SECONDS,
    JOBS_STREAM,
    MAX_ACK_PENDING,
    MAX_DELIVER,
    SUBJECT_EVENTS,
    SUBJECT_ISSUE,
    SUBJECT_VALIDATE,
    VALIDATE_ACK_WAIT_SECONDS,
)

log = logging.getLogger("acme_ra.bus")

# How long a stream's creation or update may keep timing out before start-up fails (seconds).
STREAM_UPDATE_SECONDS = 60.0
# The stream settings compared with what exists: a stream that has them all is left alone.
STREAM_FIELDS = ("subjects", "retention", "duplicate_window", "max_age", "max_msgs", "num_replicas")


async def wait_for_consumer(js: JetStreamContext, durable: str) -> None:
    """A worker's start: its durable consumer exists, or ``ensure_streams`` makes it. On a bus with
    permissions (acme_ra.natsauth) only the frontend and the signer may make streams; a validator's
    attempt is refused and raises, and its caller tries again until they have."""
    try:
        await js.consumer_info(JOBS_STREAM, durable)
    except NotFoundError:
        # Not patient: a validator's refused attempt times out at once, and it asks again.
        await ensure_streams(js, patient=False)


async def ensure_streams(js: JetStreamContext, replicas: int | None = None, *, patient: bool = True) -> None:
    """Create (or update) the job and event streams and the durable consumers. Idempotent.

    ``replicas``: copies of each stream in a NATS cluster (3 for R3). None creates a stream with
    one and keeps the replicas of a stream that exists, so that a service starting with the
    default never scales down a stream an operator (or a replicated deployment) made R3.
    ``patient``: a request NATS does not answer is asked again for ``STREAM_UPDATE_SECONDS`` (a
    cluster scaling a stream answers late); not patient, it raises at once (a worker that may not
    make streams, whose refusal looks like no answer)."""
    jobs = StreamConfig(
        name=JOBS_STREAM,
        subjects=["acme.jobs.*"],
        retention=RetentionPolicy.WORK_QUEUE,
        duplicate_window=DEDUP_WINDOW_SECONDS,
    )
    events = StreamConfig(
        name=EVENTS_STREAM,
        subjects=[SUBJECT_EVENTS],
        retention=RetentionPolicy.LIMITS,
        max_age=7 * 86400,
        max_msgs=1_000_000,
    )
    for config in (jobs, events):
        await _ensure_stream(js, config, replicas, STREAM_UPDATE_SECONDS if patient else 0.0)
    for durable, subject, ack_wait in (
        (DURABLE_VALIDATOR, SUBJECT_VALIDATE, VALIDATE_ACK_WAIT_SECONDS),
        (DURABLE_SIGNER, SUBJECT_ISSUE, ISSUE_ACK_WAIT_SECONDS),
    ):
        consumer = ConsumerConfig(
            durable_name=durable,
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=MAX_DELIVER,
            max_ack_pending=MAX_ACK_PENDING,
        )
        try:
            info = await js.consumer_info(JOBS_STREAM, durable)
        except NotFoundError:
            await js.add_consumer(JOBS_STREAM, consumer)
            continue
        await _update_consumer(js, info.config, consumer)


async def _update_consumer(js: JetStreamContext, current: ConsumerConfig, wanted: ConsumerConfig) -> None:
    """Bring an existing durable consumer to this release's ack wait, redelivery count and
    backoff (none): a deployment whose consumers were made by an older release (60 s and 120 s
    ack waits) gets the short ones. nats-server edits these in place (creating a durable that
    exists with another config updates it); the pending jobs stay. A server that refuses the edit
    is logged, and the service starts with the consumer as it is."""
    fields = ("ack_wait", "max_deliver", "max_ack_pending", "backoff")
    if all(getattr(current, name) == getattr(wanted, name) for name in fields):
        return
    try:
        await js.add_consumer(JOBS_STREAM, wanted)
    except Exception as error:  # noqa: BLE001 - a consumer we cannot edit still works
        log.warning("consumer %s not updated (ack wait stays %s s): %s", wanted.durable_name, current.ack_wait, error)
        return
    log.info("consumer %s updated: ack wait %s s -> %s s", wanted.durable_name, current.ack_wait, wanted.ack_wait)




async def _ensure_stream(js: JetStreamContext, wanted: StreamConfig, replicas: int | None, patience: float) -> None:
    """Create ``wanted``, or update the stream to it unless it already has every setting; retried
    while the cluster answers late."""
    deadline = time.monotonic() + patience
    while True:
        try:
            try:
                info = await js.stream_info(wanted.name)  # type: ignore[arg-type]
            except NotFoundError:
                wanted.num_replicas = replicas or 1
                await js.add_stream(wanted)
                return
            current = info.config
            wanted.num_replicas = replicas or current.num_replicas or 1
            if all(_same(getattr(current, name), getattr(wanted, name)) for name in STREAM_FIELDS):
                return
            await js.update_stream(wanted)
            if current.num_replicas != wanted.num_replicas:
                log.info("stream %s scaled: %s -> %s replicas", wanted.name, current.num_replicas, wanted.num_replicas)
            return
        except nats.errors.TimeoutError:
            if time.monotonic() > deadline:
                raise
            log.warning("stream %s: NATS did not answer in time; checking again", wanted.name)
            await asyncio.sleep(1.0)
        except APIError as error:  # e.g. replicas > 1 on a server that is no cluster
            raise RuntimeError(f"NATS refused the stream {wanted.name} with {wanted.num_replicas} replicas: "
                               f"{error.description}") from error


def _same(current: Any, wanted: Any) -> bool:
    """A setting of an existing stream equals what this release wants (unset: any value)."""
    if wanted is None:
        return True
    if isinstance(current, enum.Enum):
        current = current.value
    if isinstance(wanted, enum.Enum):
        wanted = wanted.value
    if isinstance(wanted, list):
        return list(current or []) == wanted
    return bool(current == wanted)
