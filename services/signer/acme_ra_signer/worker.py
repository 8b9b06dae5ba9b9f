"""The issue job: a finalized order (status ``processing``, CSR stored) becomes a certificate.

Idempotent: a redelivered or duplicated job finds the order no longer ``processing`` (or
already holding a certificate) and only acks; ``lifecycle.store_certificate`` keeps the first
certificate if two deliveries race. The job is acked only after the database commit.

The job's database work is two round trips of its own on PostgreSQL: the order's read and the
certificate's store (one statement there) on autocommit connections, no ORM session, so that
no BEGIN or COMMIT travels on its own; the order's read runs straight on asyncpg
(``acme_ra.db.fast.Statement``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

from nats.aio.client import Client as NATS
from sqlalchemy import Table, bindparam, select

from acme_ra import bus, telemetry
from acme_ra.db import lifecycle
from acme_ra.db.engine import Database
from acme_ra.db.fast import Statement
from acme_ra.db.models import Order, OrderStatus
from acme_ra_signer import metrics
from acme_ra_signer.renewal_relay import RenewalRelay
from acme_ra_signer.upstream.base import (
    IssueRequest,
    UpstreamDriver,
    UpstreamRejected,
    UpstreamUnavailable,
)

log = logging.getLogger("acme_ra_signer.worker")

class JobMessage(Protocol):
    """The part of a JetStream message the handler uses (``nats.aio.msg.Msg``)."""

    async def ack(self) -> None: ...


# What an issue job reads of its order (built and compiled once).
_orders = cast(Table, Order.__table__)
_TRACE_CONTEXT = Statement(select(_orders.c.trace_context).where(_orders.c.id == bindparam("p_order_id")))
_READ_ORDER = Statement(select(
    _orders.c.status,
    _orders.c.certificate_id,
    _orders.c.csr,
    _orders.c.identifiers,
    _orders.c.not_before,
    _orders.c.not_after,
    _orders.c.provisioner,
    _orders.c.profile,
    _orders.c.trace_context,
).where(_orders.c.id == bindparam("p_order_id")))


@dataclass
class _Outcome:
    name: str  # issued | failed | duplicate | missing
    fields: dict[str, Any]


class IssueWorker:
    """Handles ``IssueJob`` messages: upstream issuance, then the certificate in the database."""

    def __init__(
        self,
        db: Database,
        driver: UpstreamDriver,
        nc: NATS | None = None,
        relay: RenewalRelay | None = None,
    ) -> None:
        self.db = db
        self.driver = driver
        # Reads the upstream's renewal window of each certificate issued (ARI relayed).
        self.relay = relay
        # Where the issued and failed events go: a plain NATS publish (publish_event_unconfirmed).
        self.nc = nc

    async def handle(self, job: bus.IssueJob, msg: JobMessage) -> None:
        """Issue, store, ack. Raises (so ``bus.consume`` naks with backoff) when retrying may help."""
        traceparent = await self._traceparent(job.order_id, msg)
        with telemetry.span(
            "signer.issue", traceparent, **{"acme.order_id": job.order_id, "acme.upstream_driver": self.driver.name}
        ) as span:
            await self._handle_traced(job, msg, span)

    async def _handle_traced(self, job: bus.IssueJob, msg: JobMessage, span: Any) -> None:
        started = time.perf_counter()
        fields: dict[str, Any] = {"order_id": job.order_id, "attempt": _attempt(msg)}
        outcome = "retry"
        metrics.JOBS_IN_FLIGHT.inc()
        try:
            result = await self._handle(job.order_id, msg, fields)
            outcome = result.name
            fields.update(result.fields)
        except UpstreamUnavailable as error:
            fields["error"] = str(error) or "upstream unavailable"
            raise
        except Exception as error:
            fields["error"] = type(error).__name__
            raise
        finally:
            metrics.JOBS_IN_FLIGHT.dec()
            metrics.JOBS.labels(outcome).inc()
            span.set_attribute("acme.outcome", outcome)
            fields["outcome"] = outcome
            fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
            level = logging.WARNING if outcome in ("retry", "missing") else logging.INFO
            log.log(level, "issue job: %s", outcome, extra=fields)

    async def _traceparent(self, order_id: str, msg: JobMessage) -> str | None:
        """The order's trace: the job's ``traceparent`` header, else the one kept with the order
        (a job published without it, e.g. by an older frontend). None when tracing is off."""
        if not telemetry.tracing_enabled():
            return None
        headers = getattr(msg, "headers", None) or {}
        if headers.get("traceparent"):
            return str(headers["traceparent"])
        async with self.db.autocommit() as conn:
            row = (await _TRACE_CONTEXT.run(conn, {"p_order_id": order_id})).first()
        return None if row is None else cast(str | None, row.trace_context)

    async def _handle(self, order_id: str, msg: JobMessage, fields: dict[str, Any]) -> _Outcome:
        # The one read of the order (storing the certificate reads nothing: a conditional UPDATE).
        async with self.db.autocommit() as conn:
            order = (await _READ_ORDER.run(conn, {"p_order_id": order_id})).first()
        if order is None:
            # The frontend commits before it publishes, so this is a job for a deleted order.
            await msg.ack()
            return _Outcome("missing", {})
        if order.trace_context:
            fields["trace_id"] = _trace_id(order.trace_context)
        if order.status != OrderStatus.processing.value or order.certificate_id:
            await msg.ack()
            return _Outcome("duplicate", {"status": order.status})
        if not order.csr:
            return await self._fail(
                order_id, msg, {"type": "serverInternal", "detail": "the order has no CSR to sign"}
            )
        request = IssueRequest(
            order_id=order_id,
            csr_der=order.csr,
            identifiers=list(order.identifiers),
            not_before=order.not_before,
            not_after=order.not_after,
            provisioner=order.provisioner,
            profile=order.profile,
        )
        try:
            # However long the upstream takes (an ACME upstream: 30 s or more), bus.consume's
            # heartbeats keep the job from being redelivered to another replica meanwhile.
            with metrics.upstream_call("issue"), telemetry.span(
                "signer.upstream.issue", **{"acme.upstream_driver": self.driver.name}
            ):
                chain = await self.driver.issue(request)
        except UpstreamRejected as rejected:
            return await self._fail(order_id, msg, rejected.problem)
        # One statement on PostgreSQL (two in SQLite's transaction): see store_certificate.
        async with self.db.autocommit() as conn:
            certificate_id = await lifecycle.store_certificate(
                conn,
                order_id,
                chain.chain_pem,
                chain.serial_hex,
                chain.not_before,
                chain.not_after,
                alternate_chains_pem=list(chain.alternate_chains_pem),
            )
        await msg.ack()
        if certificate_id is None:
            return _Outcome("duplicate", {"serial": chain.serial_hex})
        metrics.CERTIFICATES_ISSUED.inc()
        if self.relay is not None:
            self.relay.issued(certificate_id, chain.upstream)
        await self._event(bus.Event(kind="issued", order_id=order_id, status=OrderStatus.valid.value,
                                    certificate_id=certificate_id))
        return _Outcome("issued", {"certificate_id": certificate_id, "serial": chain.serial_hex})

    async def _fail(self, order_id: str, msg: JobMessage, problem: dict[str, Any]) -> _Outcome:
        async with self.db.autocommit() as conn:  # one conditional UPDATE
            changed = await lifecycle.fail_order(conn, order_id, problem)
        await msg.ack()
        if not changed:
            return _Outcome("duplicate", {})
        await self._event(bus.Event(kind="failed", order_id=order_id, status=OrderStatus.invalid.value,
                                    error=problem))
        return _Outcome("failed", {"problem": problem.get("type"), "detail": problem.get("detail")})

    async def _event(self, event: bus.Event) -> None:
        if self.nc is not None:
            await bus.publish_event_unconfirmed(self.nc, event)


def _attempt(msg: JobMessage) -> int:
    """Which delivery of the job this is (1 = first); 1 when the message carries no metadata."""
    try:
        return int(msg.metadata.num_delivered or 1)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not a JetStream message (tests) or no metadata
        return 1


def _trace_id(traceparent: str) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``)."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None
