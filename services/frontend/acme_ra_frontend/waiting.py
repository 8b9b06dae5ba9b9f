"""Answer a challenge POST or a finalize when the work is done, not with ``Retry-After: 1``.

Validation takes tens of milliseconds and lab issuance under a hundred; a client that honours
``Retry-After: 1`` would wait a second for each. So, after its commit, a challenge POST waits
(at most ACME_RA_ANSWER_WAIT_SECONDS) for the validator's ``acme.events.validated`` and a
finalize for the signer's ``acme.events.issued``/``failed``, then reads the row again and
answers with what it says. Every frontend receives every event (a plain subscription, no queue
group), so the replica holding the request hears it behind any load balancer. The event is only
a hint: the answer always comes from the database, and a lost event costs the wait, no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger("acme_ra.frontend.waiting")

# The events that end a wait, and the field naming what they are about.
_EVENTS = {"acme.events.validated": "challenge_id", "acme.events.issued": "order_id", "acme.events.failed": "order_id"}


class WorkEvents:
    """The futures of the requests waiting in this process, by challenge or order id."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._subscriptions: list[Subscription] = []

    async def start(self, nc: NATS) -> None:
        for subject, field in _EVENTS.items():
            self._subscriptions.append(await nc.subscribe(subject, cb=self._handler(field)))

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()

    def _handler(self, field: str):  # type: ignore[no-untyped-def]
        async def on_event(msg: Msg) -> None:
            try:
                key = orjson.loads(msg.data).get(field)
            except (orjson.JSONDecodeError, AttributeError):
                return
            for future in self._waiting.pop(key, ()) if isinstance(key, str) else ():
                if not future.done():
                    future.set_result(None)

        return on_event

    def expect(self, key: str) -> asyncio.Future[None]:
        """Register before the commit, so that an event arriving at any moment after is not missed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, set()).add(future)
        return future

    def forget(self, key: str, future: asyncio.Future[None]) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiting[key]

    @property
    def waiting(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

    async def wait(self, key: str, future: asyncio.Future[None], timeout: float) -> bool:
        """True if the event came within ``timeout`` seconds; the registration is gone either way."""
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self.forget(key, future)
