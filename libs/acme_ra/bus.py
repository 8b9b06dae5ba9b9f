"""NATS contracts: streams, subjects, job messages, and the publish/consume helpers.

Jobs go through JetStream work-queue streams with durable pull consumers (explicit ack,
``max_deliver``, backoff). ``Nats-Msg-Id`` is the job id, so a duplicate publish inside the
de-duplication window is dropped; consumers are idempotent beyond that. The W3C trace context
travels in the ``traceparent`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict

log = logging.getLogger("acme_ra.bus")

JOBS_STREAM = "ACME_JOBS"
EVENTS_STREAM = "ACME_EVENTS"
SUBJECT_VALIDATE = "acme.jobs.validate"
SUBJECT_ISSUE = "acme.jobs.issue"
SUBJECT_EVENTS = "acme.events.>"
SUBJECT_REVOKE_RPC = "acme.rpc.revoke"
SUBJECT_CAA_RPC = "acme.rpc.caa"

DURABLE_VALIDATOR = "validator"
DURABLE_SIGNER = "signer"

# Window in which JetStream drops a second publish with the same Nats-Msg-Id (seconds).
DEDUP_WINDOW_SECONDS = 120
# How long a job may go without a sign of life (an ack or an in-progress heartbeat) before
# JetStream redelivers it to another replica: what a killed validator or signer (SIGKILL, OOM)
# costs its job. Short, so that a crashed job is back in work within seconds (a client such as
# lego waits 30 s for its certificate); a live job of any length is not redelivered, because
# ``consume`` sends heartbeats while it runs (HEARTBEATS_PER_ACK_WAIT). No setting: these are
# the bus's contract, and ``ensure_streams`` writes them to existing consumers too.
VALIDATE_ACK_WAIT_SECONDS = 10
ISSUE_ACK_WAIT_SECONDS = 10
# A running job's heartbeats per ack wait: every 2.5 s for a 10 s ack wait, so three in a row may
# be late (a busy event loop, a NATS reconnect) before a live job would be redelivered.
HEARTBEATS_PER_ACK_WAIT = 4
# Delay before the next delivery of a job whose handler failed (``consume`` naks with it); the
# last value repeats until max_deliver. Deliberately not the consumer's ``backoff``: with one,
# nats-server takes backoff[n] as the ack wait of the n-th delivery in place of ``ack_wait``
# (a 1 s ack wait for the first, which a live job's heartbeats would have to beat, and 30 s
# before a crashed job of a later delivery came back).
REDELIVERY_BACKOFF_SECONDS = [1, 2, 5, 10, 30]
MAX_DELIVER = 20
# Jobs a consumer may hold unacknowledged, all replicas together.
MAX_ACK_PENDING = 10_000


class ValidateJob(BaseModel):
    """Validate one challenge (frontend → validator)."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    challenge_id: str
    order_id: str | None = None


class IssueJob(BaseModel):
    """Issue the certificate of one order whose CSR is stored (frontend → signer)."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    order_id: str


class Event(BaseModel):
    """Something happened to an order (any service → observers).

    ``validated`` and ``failed``/``issued`` events carry the outcome as committed (the status
    with ``validated``, ``error`` or ``certificate_id``), so that a frontend answering a waiting
    request renders it without reading the row again (waiting.py); an event without them (an
    older publisher) makes it read the row."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    kind: Literal["validated", "issued", "revoked", "failed"]
    order_id: str | None = None
    challenge_id: str | None = None
    status: str | None = None
    # A challenge's validation time (valid), as stored.
    validated: dt.datetime | None = None
    # The problem stored with an invalid challenge or order.
    error: dict[str, Any] | None = None
    # The certificate of an order that became valid (issued), or the one revoked.
    certificate_id: str | None = None

    def outcome(self) -> dict[str, Any] | None:
        """The fields of the challenge or order row this event's outcome set, as committed (a
        ``validated``, ``issued`` or ``failed`` event); None when it carries none (an older
        publisher)."""
        if self.status == "invalid" and self.error is not None:
            return {"status": self.status, "error": self.error}
        if self.status == "valid" and self.kind == "validated" and self.validated is not None:
            return {"status": self.status, "validated": self.validated}
        if self.status == "valid" and self.kind == "issued" and self.certificate_id is not None:
            return {"status": self.status, "certificate_id": self.certificate_id}
        return None


class RevokeRequest(BaseModel):
    """Revoke one certificate upstream (frontend → signer, NATS request/reply on acme.rpc.revoke).

    The frontend has already authorised the requester; the signer revokes with the upstream
    and records the revocation in the database before it replies."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    certificate_id: str
    reason: int = 0


class RevokeReply(BaseModel):
    """``outcome``: revoked | already_revoked | unavailable (try later) | rejected (``problem`` says why)."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    outcome: Literal["revoked", "already_revoked", "unavailable", "rejected"]
    problem: dict[str, str] | None = None


# Queue group of the signers answering revoke requests; the frontend's wait for a reply (seconds).
REVOKE_QUEUE_GROUP = "signer"
REVOKE_RPC_TIMEOUT_SECONDS = 30


class CaaCheck(BaseModel):
    """One DNS name to check: as its authorization was validated (name without "*.")."""

    model_config = ConfigDict(extra="ignore")
    name: str
    wildcard: bool = False
    method: str


class CaaRecheckRequest(BaseModel):
    """Check CAA again at finalization for names validated too long ago (frontend → validator,
    NATS request/reply on acme.rpc.caa)."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    account_uri: str
    checks: list[CaaCheck]


class CaaRecheckReply(BaseModel):
    """``outcome``: permitted | refused (``problem``: the caa or dns problem as data)."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    outcome: Literal["permitted", "refused"]
    problem: dict[str, str] | None = None


# Queue group of the validators answering CAA re-checks; the frontend's wait for a reply (seconds).
CAA_QUEUE_GROUP = "validator"
CAA_RPC_TIMEOUT_SECONDS = 20


JobT = TypeVar("JobT", bound=BaseModel)


async def _on_error(error: Exception) -> None:
    log.warning("nats: %s", error or type(error).__name__)


async def _on_disconnected() -> None:
    log.warning("nats: disconnected; reconnecting")


async def _on_reconnected() -> None:
    log.info("nats: reconnected")


async def connect(url: str, name: str, options: Mapping[str, Any] | None = None) -> NATS:
    """Connect, reconnecting forever: a restarting nats-server must not kill a service.

    ``url`` may list several servers of a cluster, comma-separated (``nats://a:4222,nats://b:4222``):
    the client starts with any that answers and fails over to the others. ``options``: more
    nats-py connect options, the service's credentials, inbox prefix and TLS
    (``natsauth.connect_options``); none connects without credentials (a NATS without auth)."""
    servers = [server.strip() for server in url.split(",") if server.strip()]
    return await nats.connect(
        servers,
        name=name,
        error_cb=_on_error,
        disconnected_cb=_on_disconnected,
        reconnected_cb=_on_reconnected,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        **(options or {}),
    )


async def wait_for_consumer(js: JetStreamContext, durable: str) -> None:
    """A worker's start: its durable consumer exists, or ``ensure_streams`` makes it (acme_ra.streams)."""
    from acme_ra import streams  # the streams' set-up lives there (module size)

    await streams.wait_for_consumer(js, durable)


async def ensure_streams(js: JetStreamContext, replicas: int | None = None) -> None:
    """Create (or update) the job and event streams and the durable consumers (acme_ra.streams)."""
    from acme_ra import streams

    await streams.ensure_streams(js, replicas)


async def publish_job(
    js: JetStreamContext, subject: str, job: BaseModel, msg_id: str, traceparent: str | None = None
) -> None:
    headers = {"Nats-Msg-Id": msg_id}
    if traceparent:
        headers["traceparent"] = traceparent
    await js.publish(subject, job.model_dump_json().encode(), headers=headers)


async def publish_event(js: JetStreamContext, event: Event) -> None:
    """Best effort: an event that cannot be published is logged, never fails the job."""
    try:
        await js.publish(f"acme.events.{event.kind}", event.model_dump_json().encode())
    except Exception as error:  # noqa: BLE001 - events are advisory
        log.warning("event %s not published: %s", event.kind, error)


async def publish_event_unconfirmed(nc: NATS, event: Event) -> None:
    """``publish_event`` as a plain NATS publish, without waiting for JetStream's acknowledgement:
    the events stream still keeps it (it listens on the subjects) and subscribers (the frontend's
    answer waits) get it as soon; what goes is the wait for the PubAck and the confirmation that
    the stream stored it, which an advisory event can do without (0.3-0.4 ms of CPU per event:
    ``python -m bench.consume_cost --events confirmed|unconfirmed``). Logged, never raised, when
    it cannot be sent."""
    try:
        await nc.publish(f"acme.events.{event.kind}", event.model_dump_json().encode())
    except Exception as error:  # noqa: BLE001 - events are advisory
        log.warning("event %s not published: %s", event.kind, error)


def redelivery_delay(msg: Msg) -> float:
    """Backoff before the next delivery of a job that failed this time."""
    attempt = max(1, msg.metadata.num_delivered if msg.metadata else 1)
    return float(REDELIVERY_BACKOFF_SECONDS[min(attempt, len(REDELIVERY_BACKOFF_SECONDS)) - 1])


Handler = Callable[[JobT, Msg], Awaitable[None]]

# A pull request asks for as many jobs as there are idle handlers and waits this long for them;
# nats-server then answers 408 for the jobs it still owes (seconds). Short, so that a request a
# restarted nats-server forgot is soon replaced.
PULL_EXPIRES_SECONDS = 1.0
# A pull request neither filled nor answered by then is given up (a reconnect lost it).
PULL_GIVE_UP_SECONDS = PULL_EXPIRES_SECONDS + 1.0
# Wait after a pull request nats-server refused (no such consumer, ...) before the next one.
PULL_ERROR_WAIT_SECONDS = 1.0
_STATUS = "Status"  # the header of nats-server's status messages (408, 409, 503)
_EXPIRED = "408"


class _Heartbeat:
    """Tells JetStream, every ``every`` seconds, that a job is still being worked on
    (``msg.in_progress()``, which restarts its ack wait), until :meth:`stop`. A timer rather than
    a task: most jobs end before the first beat and cost no more than scheduling it."""

    __slots__ = ("every", "msg", "sending", "timer")

    def __init__(self, msg: Msg, every: float) -> None:
        self.msg, self.every = msg, every
        self.sending: asyncio.Task[None] | None = None
        self.timer = asyncio.get_running_loop().call_later(every, self._beat)

    def _beat(self) -> None:
        if self.sending is None or self.sending.done():
            self.sending = asyncio.get_running_loop().create_task(self._send())
        self.timer = asyncio.get_running_loop().call_later(self.every, self._beat)

    async def _send(self) -> None:
        if self.msg.is_acked:
            return
        try:
            await self.msg.in_progress()
        except Exception as error:  # noqa: BLE001 - the next beat, or the redelivery, follows
            log.debug("heartbeat not sent: %s", error)

    def stop(self) -> None:
        self.timer.cancel()
        if self.sending is not None:
            self.sending.cancel()


class _PullRequest:
    """The one pull request waiting in nats-server: jobs still owed, when to give it up. Each has
    its own reply subject, so that a status (408 at expiry) is told from a given-up request's."""

    __slots__ = ("give_up", "owed", "reply")

    def __init__(self, reply: str, owed: int) -> None:
        self.reply, self.owed, self.give_up = reply, owed, time.monotonic() + PULL_GIVE_UP_SECONDS


async def consume(
    js: JetStreamContext,
    subject: str,
    durable: str,
    model: type[JobT],
    handler: Callable[[JobT, Msg], Awaitable[None]],
    stop: asyncio.Event,
    concurrency: int = 16,
) -> None:
    """Pull jobs for idle handlers and run up to ``concurrency`` of them at once.

    One pull request at a time asks for as many jobs as there are idle handlers; nats-server
    sends each job the moment one is there, and its handler starts at once. The next request goes
    when this one is filled or has expired. nats-py's ``fetch(n)`` would instead keep the first
    job until n had come or the fetch timed out, and ``fetch(1)`` costs a pull request per job
    (a message to nats-server and back, a write of the flusher's).

    The handler acks (after its database commit). While it runs, a heartbeat (``in_progress``)
    goes every ``HEARTBEATS_PER_ACK_WAIT``-th of the consumer's ack wait, so that a job of any
    length stays with its handler, and a job whose process died is redelivered one ack wait
    after its last heartbeat. If it raises, the job is nak'ed with backoff
    and another delivery (perhaps on another replica) retries it. A message that does not parse
    is terminated: retrying cannot fix it. A job that comes after ``stop`` is nak'ed at once, for
    another replica to take. (A job for a request given up after a reconnect still runs, beyond
    ``concurrency`` if need be.)
    """
    info = await js.consumer_info(JOBS_STREAM, durable)  # the consumer exists (ensure_streams made it)
    # Its ack wait as it is now, or this release's if shorter (another service may still edit
    # a consumer an older release made).
    ack_wait = min(info.config.ack_wait or math.inf, VALIDATE_ACK_WAIT_SECONDS, ISSUE_ACK_WAIT_SECONDS)
    heartbeat_every = ack_wait / HEARTBEATS_PER_ACK_WAIT
    nc: NATS = js._nc  # pull requests are plain requests on the JetStream API's subject
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{JOBS_STREAM}.{durable}"
    inbox = nc.new_inbox()
    running: set[asyncio.Task[None]] = set()
    wake = asyncio.Event()
    waiting: _PullRequest | None = None
    refused_until = 0.0
    sent = 0

    async def run_one(msg: Msg) -> None:
        try:
            job = model.model_validate_json(msg.data)
        except ValueError as error:
            log.error("dropping unreadable job on %s: %s", subject, error)
            await msg.term()
            return
        heartbeat = _Heartbeat(msg, heartbeat_every)
        try:
            try:
                await handler(job, msg)
            finally:
                heartbeat.stop()
        except Exception:
            log.exception("job on %s failed; will be redelivered", subject)
            with contextlib.suppress(Exception):  # the ack_wait timeout redelivers anyway
                await msg.nak(delay=redelivery_delay(msg))

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        wake.set()

    async def delivered(msg: Msg) -> None:
        nonlocal waiting, refused_until
        headers = msg.headers or {}
        status = headers.get(_STATUS)
        if status is not None:  # on the request's own reply subject
            if waiting is not None and msg.subject == waiting.reply:
                waiting = None
                wake.set()
            if status != _EXPIRED:
                log.warning("pull request on %s refused: %s %s", subject, status, headers.get("Description"))
                refused_until = time.monotonic() + PULL_ERROR_WAIT_SECONDS
            return
        # A job comes with its own subject: it counts against the waiting request.
        if waiting is not None:
            waiting.owed -= 1
            if waiting.owed <= 0:
                waiting = None
                wake.set()
        if stop.is_set():
            await msg.nak()
            return
        task = asyncio.create_task(run_one(msg))
        running.add(task)
        task.add_done_callback(finished)

    subscription = await nc.subscribe(f"{inbox}.*", cb=delivered)
    stopping = asyncio.create_task(stop.wait())
    stopping.add_done_callback(lambda _: wake.set())
    try:
        while not stop.is_set():
            wake.clear()
            now = time.monotonic()
            if waiting is not None and waiting.give_up <= now:
                waiting = None
            idle = concurrency - len(running)
            if waiting is None and idle > 0 and now >= refused_until:
                sent += 1
                waiting = _PullRequest(f"{inbox}.{sent}", idle)
                pull = {"batch": idle, "expires": int(PULL_EXPIRES_SECONDS * 1e9)}
                try:
                    await nc.publish(next_subject, json.dumps(pull).encode(), reply=waiting.reply)
                except Exception as error:  # noqa: BLE001 - NATS closed or its buffer full: wait
                    log.warning("pull request on %s failed: %s", subject, error)
                    waiting, refused_until = None, now + PULL_ERROR_WAIT_SECONDS
            # Until a handler finishes, the request ends, stop, or the give-up or retry time.
            until = waiting.give_up if waiting is not None else refused_until if refused_until > now else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if until is None else until - now):
                    await wake.wait()
        if running:
            await asyncio.wait(running, timeout=30)
    finally:
        stopping.cancel()
        with contextlib.suppress(Exception):  # the connection may already be gone
            await subscription.unsubscribe()
