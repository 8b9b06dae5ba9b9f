"""Jobs whose publish failed, published again within seconds instead of minutes.

A request commits its rows first and publishes its job second. When the publish fails (NATS
restarting, the JetStream leader moving), the job waits here and is retried with a short backoff
until it is published or too old; past that the reconciler, which looks at rows stuck in
``processing``, still publishes it. Retries reuse the job's ``Nats-Msg-Id``, so a publish that
did arrive after all is dropped by JetStream's duplicate window, and consumers are idempotent
anyway. While the NATS connection is down a publish is not even tried: the request answers at
once instead of waiting for the publish timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel

log = logging.getLogger("acme_ra.frontend.outbox")

# Seconds between retries: doubled after each failed pass, up to the last value.
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0)
# A job older than this is left to the reconciler (it re-publishes rows stuck in processing).
GIVE_UP_SECONDS = 300.0
# Most jobs held; beyond it the oldest are left to the reconciler (memory stays bounded).
CAPACITY = 10_000

Publish = Callable[[str, BaseModel, str, "str | None"], Awaitable[None]]


@dataclass(frozen=True)
class PendingJob:
    subject: str
    job: BaseModel
    msg_id: str
    traceparent: str | None
    since: float


class Outbox:
    def __init__(self, publish: Publish, connected: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._publish = publish
        self._connected = connected
        self._clock = clock
        self._pending: deque[PendingJob] = deque(maxlen=CAPACITY)
        self._wake = asyncio.Event()
        self.published_later = 0  # jobs this outbox published after a failure
        self.given_up = 0  # jobs left to the reconciler

    def __len__(self) -> int:
        return len(self._pending)

    async def publish(self, subject: str, job: BaseModel, msg_id: str, traceparent: str | None) -> bool:
        """Publish now if NATS is reachable; otherwise keep the job for a retry. True if published."""
        if not self._pending and self._connected():
            try:
                await self._publish(subject, job, msg_id, traceparent)
                return True
            except Exception as error:  # noqa: BLE001 - any failure: the job waits here
                log.warning("job %s not published, retrying shortly: %s", msg_id, error)
        else:
            log.warning("job %s held until NATS answers (%d waiting)", msg_id, len(self._pending) + 1)
        if len(self._pending) == CAPACITY:
            self.given_up += 1
        self._pending.append(PendingJob(subject, job, msg_id, traceparent, self._clock()))
        self._wake.set()
        return False

    async def flush_once(self) -> None:
        """Publish every held job, oldest first; stop at the first failure (NATS still away)."""
        while self._pending:
            pending = self._pending[0]
            if self._clock() - pending.since > GIVE_UP_SECONDS:
                self._pending.popleft()
                self.given_up += 1
                log.warning("job %s left to the reconciler after %.0f s", pending.msg_id, GIVE_UP_SECONDS)
                continue
            if not self._connected():
                return
            try:
                await self._publish(pending.subject, pending.job, pending.msg_id, pending.traceparent)
            except Exception as error:  # noqa: BLE001 - next pass
                log.warning("job %s still not published: %s", pending.msg_id, error)
                return
            self._pending.popleft()
            self.published_later += 1
            log.info("job %s published after a retry", pending.msg_id)

    async def run(self) -> None:
        """Retry held jobs until cancelled."""
        attempt = 0
        while True:
            if not self._pending:
                attempt = 0
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)])
            await self.flush_once()
            attempt = attempt + 1 if self._pending else 0
