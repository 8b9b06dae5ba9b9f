"""Retention: what the database forgets, and when (``ACME_RA_RETENTION_DAYS``).

A campus RA makes about 600,000 orders a year; each brings authorizations and challenges. Rows
whose use is over are deleted once the retention period has passed:

- an order that produced no certificate (pending, ready or invalid; an order stuck in
  ``processing`` is the reconciler's), ``retention`` after it expired;
- an order that produced a certificate, ``retention`` after the certificate expired, with the
  certificate — unless it was revoked: a revocation is a record kept for ever, with its order
  (only that order's links to authorizations and its upstream journal row go);
- with each purged order, its upstream journal row and its links to authorizations; an
  authorization (and its challenges) once no order links to it any more and it expired
  ``retention`` ago (an authorization may serve several orders: it goes with the last one).

Nonces and rate-limit counters are short-lived and purged by the frontends as they go
(``nonces``, ``ratelimits``); accounts, EAB keys, blocked keys, admin tokens and the admin audit
log (``audit_log``, acme_ra.db.audit) are kept.

The purge works in batches of ``batch`` orders, each its own short transaction on old rows no
request reads, so no request waits on it; on PostgreSQL one replica at a time purges (a session
advisory lock: a replica that finds it taken skips its run). Every statement is served by an
index (``ix_orders_unissued_expires``, ``ix_certificates_not_after``, the primary keys and
foreign-key indexes): a run costs what it deletes, not what the tables hold. A dry run makes the
same deletes in one transaction and rolls it back, so it counts exactly what a run would delete.

A purge keeps the database busy for ``share`` of its time at most (``ACME_RA_PURGE_SHARE``,
default 0.25): after a batch that took *t* seconds it rests *t* × (1 − share) / share. A first
purge of years of history then takes a while (a million orders, about 7 million rows: some 20
minutes on two cores), and the requests of the moment hardly notice it. ``stop`` ends a run
between two batches (``acme-ra db purge`` on SIGINT or SIGTERM): what was deleted stays deleted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, exists, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.engine import Database
from acme_ra.db.models import (
    Authorization,
    Certificate,
    Challenge,
    Order,
    OrderAuthorization,
    OrderStatus,
    UpstreamOrder,
    utcnow,
)

log = logging.getLogger("acme_ra.db.retention")

# Orders handled per transaction: small enough that a batch takes milliseconds.
BATCH = 500
# The PostgreSQL advisory lock that makes one replica purge at a time ("acme-ra purge").
ADVISORY_LOCK_KEY = 0x6163_6D65_7075_7267 & 0x7FFF_FFFF_FFFF_FFFF
# What a report counts, in the order the rows go.
TABLES = ("orders", "certificates", "authorizations", "challenges", "upstream_orders", "order_authorizations")


@dataclasses.dataclass
class PurgeReport:
    """What one run deleted (or, with ``dry_run``, would delete) per table."""

    cutoff: dt.datetime
    dry_run: bool
    rows: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    seconds: float = 0.0
    # True when another replica held the purge lock: nothing was done.
    skipped: bool = False
    # True when asked to stop before the end: the rows counted are deleted, the rest is not.
    stopped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff.isoformat(), "dry_run": self.dry_run, "skipped": self.skipped,
                "stopped": self.stopped, "seconds": round(self.seconds, 3), "rows": dict(self.rows)}


def _unissued(cutoff: dt.datetime) -> Any:
    """Orders without a certificate that expired before ``cutoff`` (served by ix_orders_unissued_expires)."""
    return (select(Order.id)
            .where(Order.certificate_id.is_(None), Order.expires < cutoff,
                   Order.status != OrderStatus.processing.value)
            .order_by(Order.expires))  # oldest first, along the index (never a scan past dead rows)


def _issued(cutoff: dt.datetime, revoked: bool) -> Any:
    """Orders whose certificate expired before ``cutoff``: revoked ones (kept) or the others."""
    revocation = Certificate.revoked_at.is_not(None) if revoked else Certificate.revoked_at.is_(None)
    return select(Certificate.order_id).where(Certificate.not_after < cutoff, revocation).order_by(Certificate.not_after)


async def _ids(session: AsyncSession, query: Any, limit: int) -> list[str]:
    return list((await session.execute(query.limit(limit))).scalars())


async def _authorizations_left_alone(session: AsyncSession, authz_ids: Sequence[str], cutoff: dt.datetime) -> list[str]:
    """Of ``authz_ids``, those no order links to any more and that expired before ``cutoff``."""
    if not authz_ids:
        return []
    linked = exists().where(OrderAuthorization.authz_id == Authorization.id)
    query = select(Authorization.id).where(Authorization.id.in_(authz_ids), Authorization.expires < cutoff, ~linked)
    return list((await session.execute(query)).scalars())


async def _purge_orders(session: AsyncSession, order_ids: list[str], cutoff: dt.datetime, rows: dict[str, int],
                        keep_orders: bool) -> None:
    """Delete ``order_ids`` with what hangs on them; ``keep_orders``: only their links and journal rows."""
    authz_ids = sorted(set((await session.execute(
        select(OrderAuthorization.authz_id).where(OrderAuthorization.order_id.in_(order_ids)))).scalars()))
    rows["order_authorizations"] += await _delete(session, delete(OrderAuthorization).where(OrderAuthorization.order_id.in_(order_ids)))
    rows["upstream_orders"] += await _delete(session, delete(UpstreamOrder).where(UpstreamOrder.order_id.in_(order_ids)))
    if not keep_orders:
        rows["certificates"] += await _delete(session, delete(Certificate).where(Certificate.order_id.in_(order_ids)))
        rows["orders"] += await _delete(session, delete(Order).where(Order.id.in_(order_ids)))
    alone = await _authorizations_left_alone(session, authz_ids, cutoff)
    if alone:
        rows["challenges"] += await _delete(session, delete(Challenge).where(Challenge.authz_id.in_(alone)))
        rows["authorizations"] += await _delete(session, delete(Authorization).where(Authorization.id.in_(alone)))


async def _delete(session: AsyncSession, statement: Any) -> int:
    result = cast(CursorResult[Any], await session.execute(statement))
    return result.rowcount or 0


def _steps(cutoff: dt.datetime) -> list[tuple[Any, bool]]:
    """(which orders, whether the orders themselves stay) in the order a run takes them."""
    # Revoked certificates' orders stay; what hangs on them goes once (they then have neither).
    # Two steps, one EXISTS each: a semi-join along the primary keys (an OR of the two would
    # hash both tables whole).
    revoked = _issued(cutoff, revoked=True)
    return [(_unissued(cutoff), False), (_issued(cutoff, revoked=False), False),
            (revoked.where(exists().where(OrderAuthorization.order_id == Certificate.order_id)), True),
            (revoked.where(exists().where(UpstreamOrder.order_id == Certificate.order_id)), True)]


async def _rest(seconds: float, stop: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def _run(db: Database, cutoff: dt.datetime, report: PurgeReport, batch: int, share: float,
               stop: asyncio.Event) -> None:
    if report.dry_run:
        # The same deletes in one transaction, rolled back: the counts are exactly a run's.
        async with db.sessions() as session:
            await session.begin()
            try:
                for query, keep in _steps(cutoff):
                    while ids := await _ids(session, query, batch):
                        await _purge_orders(session, ids, cutoff, report.rows, keep)
            finally:
                await session.rollback()
        return
    for query, keep in _steps(cutoff):
        while True:
            if stop.is_set():
                report.stopped = True
                return
            started = time.perf_counter()
            async with db.transaction() as session:
                ids = await _ids(session, query, batch)
                if ids:
                    await _purge_orders(session, ids, cutoff, report.rows, keep)
            if len(ids) < batch:
                break
            if share < 1:  # leave the database to the requests of the moment
                await _rest((time.perf_counter() - started) * (1 - share) / share, stop)


async def purge(db: Database, retention: dt.timedelta, *, now: dt.datetime | None = None, batch: int = BATCH,
                dry_run: bool = False, share: float = 1.0, stop: asyncio.Event | None = None) -> PurgeReport:
    """Delete what ``retention`` no longer keeps (see the module's text); ``dry_run``: count it
    only; ``share``: the part of its time the purge may keep the database busy (0 < share <= 1)."""
    if retention <= dt.timedelta(0):
        raise ValueError("a retention of 0 days keeps everything (ACME_RA_RETENTION_DAYS=0): nothing to purge")
    if not 0 < share <= 1:
        raise ValueError(f"the purge's share of the database's time must be in (0, 1], not {share}")
    cutoff = (now or utcnow()) - retention
    stop = stop or asyncio.Event()  # never set: the run goes to the end
    report = PurgeReport(cutoff=cutoff, dry_run=dry_run)
    started = time.perf_counter()
    if db.is_sqlite:
        await _run(db, cutoff, report, batch, share, stop)
    else:
        async with db.engine.connect() as lock:
            taken = (await lock.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})).scalar_one()
            await lock.commit()
            if not taken:
                report.skipped = True
                log.info("purge skipped: another replica is purging")
                return report
            try:
                await _run(db, cutoff, report, batch, share, stop)
            finally:
                await lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                await lock.commit()
    report.seconds = time.perf_counter() - started
    return report
