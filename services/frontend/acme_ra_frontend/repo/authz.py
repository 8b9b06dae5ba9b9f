"""Authorizations and their challenges: the reads and state changes of RFC 8555 §7.5.

Statements are built once (``acme_ra.db.fast.Statement``: asyncpg on PostgreSQL); parameters of
UPDATE statements are named ``b_*`` (SQLAlchemy reserves the column names there).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from acme_ra.db.fast import Statement
from acme_ra.db.models import (
    Authorization,
    AuthzStatus,
    Challenge,
    ChallengeStatus,
    Order,
    OrderAuthorization,
    OrderStatus,
)
from acme_ra_frontend.repo.reads import Read


@dataclass(slots=True)
class AuthzRow:
    id: str
    account_id: str
    identifier_type: str
    identifier_value: str
    wildcard: bool
    status: str
    expires: dt.datetime


@dataclass(slots=True)
class ChallengeRow:
    id: str
    authz_id: str
    type: str
    token: str
    status: str
    validated: dt.datetime | None
    error: dict[str, Any] | None


_AUTHZ_COLUMNS = (Authorization.id, Authorization.account_id, Authorization.identifier_type,
                  Authorization.identifier_value, Authorization.wildcard, Authorization.status, Authorization.expires)
_CHALLENGE_COLUMNS = (Challenge.id, Challenge.authz_id, Challenge.type, Challenge.token, Challenge.status,
                      Challenge.validated, Challenge.error)

# An authorization with its challenges, in one statement.
AUTHZ_READ = Read(Statement(
    select(*_AUTHZ_COLUMNS, *_CHALLENGE_COLUMNS)
    .outerjoin(Challenge, Challenge.authz_id == Authorization.id)
    .where(Authorization.id == bindparam("authz_id"))
), "authz_id")
_CHALLENGE = Statement(select(*_CHALLENGE_COLUMNS).where(Challenge.id == bindparam("challenge_id")))
_EXPIRE_AUTHZ = Statement(
    update(Authorization)
    .where(Authorization.id == bindparam("b_authz_id"),
           Authorization.status.in_([AuthzStatus.pending, AuthzStatus.valid]))
    .values(status=AuthzStatus.expired)
)
_other = Challenge.__table__.alias("other")
# pending → processing, unless another challenge of the authorization is already processing.
_CLAIM_CHALLENGE = Statement(
    update(Challenge)
    .where(
        Challenge.id == bindparam("b_challenge_id"),
        Challenge.status == ChallengeStatus.pending,
        ~exists().where(_other.c.authz_id == bindparam("b_authz_id"),
                        _other.c.status == ChallengeStatus.processing),
    )
    .values(status=ChallengeStatus.processing, updated_at=bindparam("b_now"))
)
_DEACTIVATE_AUTHZ = Statement(
    update(Authorization).where(Authorization.id == bindparam("b_authz_id")).values(status=AuthzStatus.deactivated)
)


def authz_from_rows(rows: Sequence[Any]) -> tuple[AuthzRow, list[ChallengeRow]] | None:
    """An authorization and its challenges (by type) from ``AUTHZ_READ``'s rows."""
    if not rows:
        return None
    authz = AuthzRow(*rows[0][:7])
    challenges = sorted((ChallengeRow(*row[7:]) for row in rows if row[7] is not None), key=lambda c: c.type)
    return authz, challenges


async def challenge(conn: AsyncConnection, challenge_id: str) -> ChallengeRow | None:
    row = (await _CHALLENGE.run(conn, {"challenge_id": challenge_id})).first()
    return None if row is None else ChallengeRow(*row)


async def expire_authz(conn: AsyncConnection, authz_id: str) -> None:
    await _EXPIRE_AUTHZ.run(conn, {"b_authz_id": authz_id})


async def claim_challenge(conn: AsyncConnection, challenge_id: str, authz_id: str, now: dt.datetime) -> bool:
    """pending → processing in one statement; False if it was not pending or another challenge of
    the authorization is processing."""
    result = await _CLAIM_CHALLENGE.run(conn, {"b_challenge_id": challenge_id, "b_authz_id": authz_id,
                                               "b_now": now})
    return bool(result.rowcount)


async def deactivate_authz(conn: AsyncConnection, authz_id: str) -> None:
    await _DEACTIVATE_AUTHZ.run(conn, {"b_authz_id": authz_id})


async def open_orders_of_authz(session: AsyncSession, authz_id: str) -> Sequence[str]:
    """The pending or ready orders that list the authorization."""
    return (await session.execute(
        select(OrderAuthorization.order_id)
        .join(Order, Order.id == OrderAuthorization.order_id)
        .where(OrderAuthorization.authz_id == authz_id, Order.status.in_([OrderStatus.pending, OrderStatus.ready]))
    )).scalars().all()


async def valid_dns_challenges(conn: AsyncConnection, authz_ids: Sequence[str]) -> Sequence[Any]:
    """(name, wildcard, challenge type, validated) of the valid challenges of these authorizations'
    DNS names (finalize's CAA recheck)."""
    return list((await conn.execute(
        select(Authorization.identifier_value, Authorization.wildcard, Challenge.type, Challenge.validated)
        .join(Challenge, Challenge.authz_id == Authorization.id)
        .where(Authorization.id.in_(authz_ids), Authorization.identifier_type == "dns",
               Challenge.status == ChallengeStatus.valid)
    )).all())


async def held_identifiers(session: AsyncSession, account_id: str, values: Sequence[str],
                           now: dt.datetime) -> set[tuple[str, str, bool]]:
    """(type, value, wildcard) of the account's valid authorizations for these values (any case)."""
    rows = (await session.execute(
        select(Authorization.identifier_type, Authorization.identifier_value, Authorization.wildcard)
        .where(Authorization.account_id == account_id, Authorization.status == AuthzStatus.valid,
               Authorization.expires > now, func.lower(Authorization.identifier_value).in_(list(values)))
    )).all()
    return {(t, v, bool(w)) for t, v, w in rows}
