"""Rows whose job may have been lost: the reconciler's reads and its count of re-publications."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.models import Challenge, ChallengeStatus, Order, OrderStatus, UpstreamOrder


def _bump(table: type[Challenge | Order]) -> Any:
    """Count one more re-publication of a row still ``processing`` and not counted meanwhile."""
    return (
        update(table)
        .where(table.id == bindparam("p_id"), table.status == ChallengeStatus.processing,  # the same value in both tables
               table.republished == bindparam("p_seen"))
        .values(republished=table.republished + 1, updated_at=bindparam("p_now"))
    )


_BUMP = {"challenge": _bump(Challenge), "order": _bump(Order)}


async def stuck_challenges(session: AsyncSession, before: dt.datetime, limit: int) -> Sequence[Any]:
    """(id, republished) of challenges processing since before ``before``."""
    return (await session.execute(
        select(Challenge.id, Challenge.republished)
        .where(Challenge.status == ChallengeStatus.processing, Challenge.updated_at < before)
        .limit(limit)
    )).all()


async def stuck_orders(session: AsyncSession, before: dt.datetime, limit: int) -> Sequence[Any]:
    """(id, republished, trace_context, the upstream's last failure) of orders processing since
    before ``before``."""
    return (await session.execute(
        select(Order.id, Order.republished, Order.trace_context, UpstreamOrder.error)
        .outerjoin(UpstreamOrder, UpstreamOrder.order_id == Order.id)
        .where(Order.status == OrderStatus.processing, Order.updated_at < before)
        .limit(limit)
    )).all()


async def count_republications(session: AsyncSession, counted: Sequence[tuple[str, str, int]],
                               now: dt.datetime) -> None:
    """One more re-publication of each (kind "challenge" or "order", id, count seen) still
    processing and not counted meanwhile by another replica."""
    for kind, row_id, seen in counted:
        await session.execute(_BUMP[kind], {"p_id": row_id, "p_seen": seen, "p_now": now})
