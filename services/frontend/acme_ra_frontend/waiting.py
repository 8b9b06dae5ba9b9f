"""Answer a challenge POST or a finalize when the work is done, not with ``Retry-After: 1``.

Validation takes tens of milliseconds and lab issuance under a hundred; a client that honours
``Retry-After: 1`` would wait a second for each. So, after its commit, a challenge POST waits
(at most ACME_RA_ANSWER_WAIT_SECONDS) for the validator's ``acme.events.validated`` and a
finalize for the signer's ``acme.events.issued``/``failed``, and answers with the outcome the
event carries: the status with the validation time, the problem or the certificate, as the
publisher committed them before publishing (``bus.Event``), so no read of the row follows. An
event without them (an older publisher) makes the answer read the row again. Every frontend
receives every event (a plain subscription, no queue group), so the replica holding the request
hears it behind any load balancer; a lost event costs the wait, no more.

The events are trusted as the jobs are: whoever may publish on the ``acme.*`` subjects is one of
the RA's services (NATS credentials and per-service permissions keep others out: see
docs/security.md). A forged event could at worst make one response tell a client a state the
database does not hold; the next read of the order or challenge answers from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from acme_ra import bus

log = logging.getLogger("acme_ra.frontend.waiting")

# The events that end a wait, and the field naming what they are about.
_EVENTS = {"acme.events.validated": "challenge_id", "acme.events.issued": "order_id", "acme.events.failed": "order_id"}


class WorkEvents:
    """The futures of the requests waiting in this process, by challenge or order id."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[bus.Event]]] = {}
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
                data = orjson.loads(msg.data)
                key = data.get(field)
            except (orjson.JSONDecodeError, AttributeError):
                return
            if not isinstance(key, str) or key not in self._waiting:
                return  # most events are for requests held elsewhere: parsed no further
            try:
                event = bus.Event.model_validate(data)
            except ValidationError:
                return  # not an event: the waits go on
            for future in self._waiting.pop(key):
                if not future.done():
                    future.set_result(event)

        return on_event

    def expect(self, key: str) -> asyncio.Future[bus.Event]:
        """Register before the commit, so that an event arriving at any moment after is not missed."""
        future: asyncio.Future[bus.Event] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, set()).add(future)
        return future

    def forget(self, key: str, future: asyncio.Future[bus.Event]) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiting[key]

    @property
    def waiting(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

    async def wait(self, key: str, future: asyncio.Future[bus.Event], timeout: float) -> bus.Event | None:
        """The event if it came within ``timeout`` seconds, else None; the registration is gone
        either way."""
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self.forget(key, future)
