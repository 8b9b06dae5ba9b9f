"""CAA checked again at finalization (checklist V6; Boulder's RA does the same): the frontend asks
on ``acme.rpc.caa`` for the names of an order whose validation is older than its re-check age,
and one validator of the queue group answers with the same CAA rules as at validation time.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from acme_ra import bus
from acme_ra_validator.caa import check_caa
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.resolver import NameResolver

log = logging.getLogger("acme_ra.validator.caa_recheck")

# The longest one name's CAA lookups may take before the re-check answers "dns" (seconds); below
# the frontend's bus.CAA_RPC_TIMEOUT_SECONDS so that it gets an answer.
CAA_RECHECK_NAME_TIMEOUT_SECONDS = 10.0


class CaaRecheckResponder:
    """Answers CAA re-check requests; ``subscribe`` puts it on the bus."""

    def __init__(self, resolver: NameResolver, identities: tuple[str, ...]) -> None:
        self.resolver = resolver
        self.identities = identities
        self._running: set[asyncio.Task[None]] = set()

    async def subscribe(self, nc: NATS) -> Subscription:
        return await nc.subscribe(bus.SUBJECT_CAA_RPC, queue=bus.CAA_QUEUE_GROUP, cb=self._on_message)

    async def _on_message(self, message: Msg) -> None:
        # Answer in a task of its own: nats-py runs one callback at a time per subscription.
        task = asyncio.create_task(self._answer(message))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, message: Msg) -> None:
        try:
            request = bus.CaaRecheckRequest.model_validate_json(message.data)
        except ValidationError:
            reply = bus.CaaRecheckReply(outcome="refused", problem={
                "type": "serverInternal", "detail": "unreadable CAA re-check request"})
        else:
            reply = await self.recheck(request)
        try:
            await message.respond(reply.model_dump_json().encode())
        except Exception as error:  # noqa: BLE001 - the frontend times out and answers 503
            log.warning("CAA re-check answer not sent: %s", error)

    async def recheck(self, request: bus.CaaRecheckRequest) -> bus.CaaRecheckReply:
        for check in request.checks:
            try:
                async with asyncio.timeout(CAA_RECHECK_NAME_TIMEOUT_SECONDS):
                    await check_caa(self.resolver, check.name, wildcard=check.wildcard, identities=self.identities,
                                    account_uri=request.account_uri, method=check.method)
            except ValidationFailure as failure:
                log.info("CAA re-check refused", extra={"identifier": check.name, "problem": failure.type})
                return bus.CaaRecheckReply(outcome="refused", problem=failure.to_data())
            except TimeoutError:
                return bus.CaaRecheckReply(outcome="refused", problem={
                    "type": "dns", "detail": f"CAA lookups for {check.name} timed out"})
        return bus.CaaRecheckReply(outcome="permitted")
