"""The inventory of issued certificates: which expire when, from which upstream, issuer, profile,
account and EAB key, and whether a later certificate for the same names replaced them.

A certificate is *replaced* when a later one (expiring after it, not revoked) carries the same
names (``names_sha256``, lifecycle.names_sha256): the host renewed. One that expires soon and is
not replaced is the one to worry about. Every query here is served by an index
(``ix_certificates_not_after``, ``ix_certificates_names_not_after``,
``ix_certificates_created_at``), so the cost follows what is shown, not the table's size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

from sqlalchemy import Select, case, exists, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from acme_ra.db.models import Account, Certificate, Order, UpstreamOrder

# The upstream of a certificate with no upstream journal row (the lab CA signs directly).
NO_UPSTREAM = "lab"
# The windows of the expiry gauges and their labels.
GAUGE_WINDOWS = {"7d": dt.timedelta(days=7), "30d": dt.timedelta(days=30)}


# A listing's "expiring within": hours, days or weeks ("12h", "30d", "2w").
DURATION_PATTERN = r"^[0-9]{1,5}[hdw]$"
_UNITS = {"h": dt.timedelta(hours=1), "d": dt.timedelta(days=1), "w": dt.timedelta(weeks=1)}


def parse_duration(value: str) -> dt.timedelta:
    """``30d`` → 30 days; ValueError (saying what is wanted) for anything else."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{value!r} is not a duration: give a number and h, d or w, e.g. 30d")
    return int(value[:-1]) * _UNITS[value[-1]]


@dataclasses.dataclass(frozen=True)
class CertificateFilter:
    """What a listing asks for; every field optional."""

    expiring_within: dt.timedelta | None = None  # not yet expired, expiring within this
    upstream: str | None = None
    profile: str | None = None
    issuer: str | None = None  # substring of the RFC 4514 issuer, any case
    account_id: str | None = None
    eab_kid: str | None = None
    revoked: bool | None = None
    unreplaced: bool = False  # only those no later certificate for the same names replaced


def replaced() -> Any:
    """True for a certificate a later, unrevoked certificate with the same names replaced."""
    later = aliased(Certificate)
    return exists().where(later.names_sha256 == Certificate.names_sha256, later.not_after > Certificate.not_after,
                          later.revoked_at.is_(None))


def upstream_label() -> Any:
    return func.coalesce(UpstreamOrder.upstream, literal(NO_UPSTREAM))


def certificates_query(wanted: CertificateFilter, now: dt.datetime) -> Select[Any]:
    """(Certificate, upstream, profile, eab_kid) rows: soonest expiry first when ``expiring_within``
    is given, else newest first."""
    query = (select(Certificate, upstream_label().label("upstream"), Order.profile, Account.eab_kid)
             .join(Order, Order.id == Certificate.order_id)
             .join(Account, Account.id == Certificate.account_id)
             .outerjoin(UpstreamOrder, UpstreamOrder.order_id == Certificate.order_id))
    if wanted.expiring_within is not None:
        query = query.where(Certificate.not_after > now, Certificate.not_after <= now + wanted.expiring_within)
        query = query.order_by(Certificate.not_after, Certificate.id)
    else:
        query = query.order_by(Certificate.created_at.desc(), Certificate.id)
    if wanted.upstream is not None:
        query = query.where(upstream_label() == wanted.upstream)
    if wanted.profile is not None:
        query = query.where(Order.profile == wanted.profile)
    if wanted.issuer is not None:
        query = query.where(func.lower(Certificate.issuer).contains(wanted.issuer.lower(), autoescape=True))
    if wanted.account_id is not None:
        query = query.where(Certificate.account_id == wanted.account_id)
    if wanted.eab_kid is not None:
        query = query.where(Account.eab_kid == wanted.eab_kid)
    if wanted.revoked is True:
        query = query.where(Certificate.revoked_at.is_not(None))
    elif wanted.revoked is False:
        query = query.where(Certificate.revoked_at.is_(None))
    if wanted.unreplaced:
        query = query.where(Certificate.revoked_at.is_(None), ~replaced())
    return query


async def expiring_unreplaced(session: AsyncSession, now: dt.datetime) -> dict[tuple[str, str], int]:
    """{(upstream, window label): certificates expiring within the window that nothing replaced}."""
    longest = max(GAUGE_WINDOWS.values())
    # The upstream looked up per certificate along the journal's primary key (a join would
    # hash the whole journal), then counted per upstream.
    upstream = (select(UpstreamOrder.upstream).where(UpstreamOrder.order_id == Certificate.order_id)
                .scalar_subquery())
    lapsing = (select(Certificate.not_after, upstream.label("upstream"))
               .where(Certificate.not_after > now, Certificate.not_after <= now + longest,
                      Certificate.revoked_at.is_(None), ~replaced())
               .subquery())
    cases = [func.sum(case((lapsing.c.not_after <= now + window, 1), else_=0)).label(label)
             for label, window in GAUGE_WINDOWS.items()]
    rows = (await session.execute(select(lapsing.c.upstream, *cases).group_by(lapsing.c.upstream))).all()
    return {(row.upstream or NO_UPSTREAM, label): int(getattr(row, label) or 0)
            for row in rows for label in GAUGE_WINDOWS}


async def expiring_per_week(session: AsyncSession, now: dt.datetime, weeks: int) -> list[int]:
    """Unrevoked certificates expiring in each of the next ``weeks`` weeks (replaced ones too)."""
    rows = (await session.execute(
        select(Certificate.not_after)
        .where(Certificate.not_after > now, Certificate.not_after <= now + dt.timedelta(weeks=weeks),
               Certificate.revoked_at.is_(None)))).scalars()
    counts = [0] * weeks
    for not_after in rows:
        counts[min(weeks - 1, (not_after - now) // dt.timedelta(weeks=1))] += 1
    return counts


async def issued_per_day(session: AsyncSession, now: dt.datetime, days: int) -> list[int]:
    """Certificates issued on each of the last ``days`` days, oldest first (today last)."""
    start = (now - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = (await session.execute(select(Certificate.created_at).where(Certificate.created_at >= start))).scalars()
    counts = [0] * days
    for created in rows:
        counts[min(days - 1, (created - start).days)] += 1
    return counts
