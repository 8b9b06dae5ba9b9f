"""Accounts (RFC 8555 §7.3): registration, External Account Binding, deactivation, terms."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import literal, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from acme_ra.db.models import Account, Authorization, AuthzStatus, EabKey, Order, OrderStatus, UTCDateTime


async def by_thumbprint(session: AsyncSession, key_thumbprint: str) -> Account | None:
    return (await session.execute(select(Account).where(Account.key_thumbprint == key_thumbprint))).scalar_one_or_none()


async def by_id(session: AsyncSession, account_id: str) -> Account | None:
    return (await session.execute(select(Account).where(Account.id == account_id))).scalar_one_or_none()


async def eab_key(session: AsyncSession, kid: str) -> EabKey | None:
    return (await session.execute(select(EabKey).where(EabKey.kid == kid))).scalar_one_or_none()


async def bind_eab_key(session: AsyncSession, kid: str, account_id: str) -> bool:
    """Bind the EAB key to the account; False if another account holds it already."""
    bound = await session.execute(
        update(EabKey).where(EabKey.kid == kid, EabKey.account_id.is_(None)).values(account_id=account_id))
    return bool(bound.rowcount)  # type: ignore[attr-defined]


async def end_pending_work(session: AsyncSession, account_id: str) -> None:
    """A deactivated account's pending authorizations are deactivated and its open orders invalid
    (§7.3.6)."""
    await session.execute(
        update(Authorization)
        .where(Authorization.account_id == account_id, Authorization.status == AuthzStatus.pending)
        .values(status=AuthzStatus.deactivated)
    )
    await session.execute(
        update(Order)
        .where(Order.account_id == account_id, Order.status.in_([OrderStatus.pending, OrderStatus.ready]))
        .values(status=OrderStatus.invalid, error={"type": "unauthorized", "detail": "account deactivated"})
    )


async def order_page(session: AsyncSession, account_id: str, after: tuple[dt.datetime, str] | None,
                     limit: int) -> Sequence[tuple[str, dt.datetime]]:
    """Up to ``limit`` of the account's orders that are not invalid, oldest first, from the one
    after ``after`` (its created_at and id): (id, created_at) pairs. A keyset on
    ix_orders_account_created, so a page costs the same at any depth and orders created meanwhile
    only ever add to the end."""
    query = (select(Order.id, Order.created_at)
             .where(Order.account_id == account_id, Order.status != OrderStatus.invalid)
             .order_by(Order.created_at, Order.id)
             .limit(limit))
    if after is not None:
        query = query.where(tuple_(Order.created_at, Order.id) > tuple_(
            literal(after[0], UTCDateTime()), literal(after[1], Order.id.type)))
    return [(row.id, row.created_at) for row in await session.execute(query)]


async def id_by_thumbprint(session: AsyncSession, key_thumbprint: str) -> str | None:
    return (await session.execute(
        select(Account.id).where(Account.key_thumbprint == key_thumbprint))).scalar_one_or_none()


async def record_agreed_terms(conn: AsyncConnection | AsyncSession, account_id: str, tos_url: str) -> None:
    """The account agrees to the terms at ``tos_url``."""
    await conn.execute(update(Account).where(Account.id == account_id).values(tos_agreed=True, tos_agreed_url=tos_url))
