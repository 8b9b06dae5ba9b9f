"""Revocation over NATS request/reply: ``bus.RevokeRequest`` on ``acme.rpc.revoke`` (queue group
``signer``), answered with ``bus.RevokeReply``.

The frontend has already authorised the requester. The signer revokes upstream first, then
records the revocation (``revoked_at``, ``revocation_reason``) in one transaction, then replies;
an upstream that already holds the certificate as revoked counts as a revocation. So a retried
request converges: the upstream says ``alreadyRevoked`` and the database catches up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy import select, update

from acme_ra import blocked_keys, bus, telemetry
from acme_ra.db.engine import Database
from acme_ra.db.models import Certificate, Order, utcnow
from acme_ra_signer import metrics
from acme_ra_signer.upstream.base import UpstreamDriver, UpstreamRejected, UpstreamUnavailable

log = logging.getLogger("acme_ra_signer.revoker")

# The upstream gets this long (seconds), so that the reply beats the frontend's own timeout.
REVOKE_UPSTREAM_TIMEOUT_SECONDS = bus.REVOKE_RPC_TIMEOUT_SECONDS - 10
# Revocations handled at once by one signer.
REVOKE_CONCURRENCY = 32


class RevokeResponder:
    """Answers revoke requests; ``subscribe`` puts it on the bus."""

    def __init__(
        self,
        db: Database,
        driver: UpstreamDriver,
        js: JetStreamContext | None = None,
        upstream_timeout: float = REVOKE_UPSTREAM_TIMEOUT_SECONDS,
    ) -> None:
        self.db = db
        self.driver = driver
        self.js = js
        self.upstream_timeout = upstream_timeout
        self._slots = asyncio.Semaphore(REVOKE_CONCURRENCY)
        self._running: set[asyncio.Task[None]] = set()

    async def subscribe(self, nc: NATS) -> Subscription:
        return await nc.subscribe(bus.SUBJECT_REVOKE_RPC, queue=bus.REVOKE_QUEUE_GROUP, cb=self._on_message)

    async def wait_idle(self, timeout: float) -> None:
        """Let the revocations in hand finish (shutdown)."""
        if self._running:
            await asyncio.wait(self._running, timeout=timeout)

    async def _on_message(self, msg: Msg) -> None:
        # nats-py runs one callback at a time per subscription: hand the work to a task.
        await self._slots.acquire()
        task = asyncio.create_task(self._respond(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _respond(self, msg: Msg) -> None:
        try:
            try:
                request = bus.RevokeRequest.model_validate_json(msg.data)
            except ValidationError as error:
                reply = bus.RevokeReply(
                    outcome="rejected",
                    problem={"type": "malformed", "detail": f"unreadable revoke request: {error.error_count()} errors"},
                )
            else:
                reply = await self.answer(request, (msg.headers or {}).get("traceparent"))
            if msg.reply:
                await msg.respond(reply.model_dump_json().encode())
        except Exception:  # the frontend times out and answers 503
            log.exception("revoke request not answered")
        finally:
            self._slots.release()

    async def answer(self, request: bus.RevokeRequest, traceparent: str | None = None) -> bus.RevokeReply:
        """Revoke upstream, record, and say how it went (one log event per request), in a span of
        the requester's trace (``traceparent``), else of the certificate's order's trace."""
        if telemetry.tracing_enabled() and not traceparent:
            traceparent = await self._order_traceparent(request.certificate_id)
        attributes = {"acme.certificate_id": request.certificate_id, "acme.upstream_driver": self.driver.name}
        with telemetry.span("signer.revoke", traceparent, **attributes) as span:
            reply = await self._answer_logged(request)
            span.set_attribute("acme.outcome", reply.outcome)
            return reply

    async def _order_traceparent(self, certificate_id: str) -> str | None:
        try:
            async with self.db.sessions() as session:
                query = (
                    select(Order.trace_context)
                    .join(Certificate, Certificate.order_id == Order.id)
                    .where(Certificate.id == certificate_id)
                )
                return (await session.execute(query)).scalar_one_or_none()
        except Exception:  # noqa: BLE001 - tracing only: the revocation goes on without it
            return None

    async def _answer_logged(self, request: bus.RevokeRequest) -> bus.RevokeReply:
        started = time.perf_counter()
        fields: dict[str, Any] = {"certificate_id": request.certificate_id, "reason": request.reason}
        reply = bus.RevokeReply(outcome="unavailable")
        try:
            reply = await self._answer(request, fields)
        except Exception as error:
            fields["error"] = type(error).__name__
            log.exception("revoke failed unexpectedly", extra=fields)
        metrics.REVOCATIONS.labels(reply.outcome).inc()
        fields["outcome"] = reply.outcome
        fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
        log.log(
            logging.WARNING if reply.outcome in ("unavailable", "rejected") else logging.INFO,
            "revoke: %s",
            reply.outcome,
            extra=fields,
        )
        return reply

    async def _answer(self, request: bus.RevokeRequest, fields: dict[str, Any]) -> bus.RevokeReply:
        async with self.db.sessions() as session:
            certificate = await session.get(Certificate, request.certificate_id)
        if certificate is None:
            return bus.RevokeReply(outcome="rejected", problem={"type": "malformed", "detail": "no such certificate"})
        fields.update(order_id=certificate.order_id, serial=certificate.serial)
        if certificate.revoked_at is not None:
            return bus.RevokeReply(outcome="already_revoked")
        leaf = x509.load_pem_x509_certificate(certificate.chain_pem.encode())
        try:
            with metrics.upstream_call("revoke"), telemetry.span(
                "signer.upstream.revoke", **{"acme.upstream_driver": self.driver.name}
            ):
                await asyncio.wait_for(
                    self.driver.revoke(leaf.public_bytes(Encoding.DER), request.reason, order_id=certificate.order_id),
                    self.upstream_timeout,
                )
        except UpstreamRejected as rejected:
            problem = {key: str(value) for key, value in rejected.problem.items() if key in ("type", "detail")}
            fields["problem"] = problem.get("type")
            return bus.RevokeReply(outcome="rejected", problem=problem)
        except (UpstreamUnavailable, TimeoutError) as error:
            fields["error"] = str(error) or "upstream timed out"
            return bus.RevokeReply(outcome="unavailable")
        async with self.db.transaction() as session:
            changed = await session.execute(
                update(Certificate)
                .where(Certificate.id == certificate.id, Certificate.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revocation_reason=request.reason)
            )
            if changed.rowcount and request.reason == blocked_keys.KEY_COMPROMISE:  # type: ignore[attr-defined]
                await blocked_keys.block(session, leaf.public_key(), certificate.id)
        if changed.rowcount == 0:  # type: ignore[attr-defined]
            return bus.RevokeReply(outcome="already_revoked")  # a concurrent request recorded it first
        if self.js is not None:
            await bus.publish_event(self.js, bus.Event(kind="revoked", order_id=certificate.order_id,
                                                       certificate_id=certificate.id))
        return bus.RevokeReply(outcome="revoked")
