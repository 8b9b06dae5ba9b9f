"""Authentication's SQL: the signing account, the nonce's redemption, and the route's resource
read with them (one statement on PostgreSQL for all three, one round trip per POST-as-GET)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, Text, bindparam, cast, exists, func, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from acme_ra.db.fast import Statement
from acme_ra.db.models import Account, RedeemedNonce
from acme_ra_frontend.repo.reads import Read


@dataclass(slots=True)
class SigningAccount:
    """The account that signed a request, read with the nonce's redemption (not an ORM object:
    handlers that change the account load it with ``AcmeCall.orm_account``)."""

    id: str
    status: str
    key_thumbprint: str
    jwk_text: str
    tos_agreed: bool
    tos_agreed_url: str | None
    eab_kid: str | None


@dataclass(slots=True)
class Authenticated:
    """What one authenticating statement found: the account (None: no such account), whether the
    nonce was fresh (redeemed now), and the route's resource rows when they were read with it."""

    account: SigningAccount | None
    fresh: bool
    resource: list[Any] | None = None


# The signing account's columns; the JWK as its stored JSON text (the key of the parsed-JWK cache).
_ACCOUNT_COLUMNS = (
    Account.id, Account.status, Account.key_thumbprint, cast(Account.jwk, Text).label("jwk_text"),
    Account.tos_agreed, Account.tos_agreed_url, Account.eab_kid,
)
# Where the resource's columns start in a row of an authenticated read.
_RESOURCE_COLUMN = 1 + len(_ACCOUNT_COLUMNS)
_NONCE_VALUES: dict[str, Any] = {"nonce": bindparam("nonce"), "expires_at": bindparam("expires")}
# Redeeming a nonce: a second use inserts nothing (the primary key), whichever request commits first.
_REDEEM = {
    dialect: Statement(
        insert(RedeemedNonce).values(_NONCE_VALUES).on_conflict_do_nothing().returning(RedeemedNonce.nonce))
    for dialect, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_ACCOUNT = Statement(select(*_ACCOUNT_COLUMNS).where(Account.id == bindparam("account_id")))
# PostgreSQL: the account and the redemption in one statement, one round trip (a data-modifying
# CTE always runs to completion, read or not).
_redeemed = _REDEEM["postgresql"].statement.cte("redeemed")
_ACCOUNT_AND_REDEEM = Statement(select(
    select(func.count()).select_from(_redeemed).scalar_subquery().label("fresh"), *_ACCOUNT_COLUMNS
).where(Account.id == bindparam("account_id")))
# PostgreSQL, a read by an account whose key the caller has verified before: the nonce is
# redeemed only if that key is still the account's, and the account read, in one statement.
_key_still_current = exists().where(Account.id == bindparam("account_id"),
                                    cast(Account.jwk, Text) == bindparam("jwk_text"))
_redeemed_if_key = (
    pg_insert(RedeemedNonce)
    .from_select(["nonce", "expires_at"],
                 select(bindparam("nonce", type_=String), bindparam("expires", type_=RedeemedNonce.expires_at.type))
                 .where(_key_still_current))
    .on_conflict_do_nothing()
    .returning(RedeemedNonce.nonce)
    .cte("redeemed_if_key")
)
_ACCOUNT_AND_REDEEM_IF_KEY = Statement(select(
    select(func.count()).select_from(_redeemed_if_key).scalar_subquery().label("fresh"), *_ACCOUNT_COLUMNS
).where(Account.id == bindparam("account_id")))
# PostgreSQL, either of the two with the route's resource read in the same statement. The resource
# is outer-joined: the account's row comes back whether or not the resource exists (its columns
# are then NULL). Built on first use, per (read, if_key).
_AUTHENTICATED_READS: dict[tuple[Read, bool], Statement] = {}


def _authenticated_read(read: Read, if_key: bool) -> Statement:
    statement = _AUTHENTICATED_READS.get((read, if_key))
    if statement is None:
        redeemed = _redeemed_if_key if if_key else _redeemed
        resource = read.statement.statement.subquery("resource")
        statement = _AUTHENTICATED_READS[read, if_key] = Statement(
            select(select(func.count()).select_from(redeemed).scalar_subquery().label("fresh"),
                   *_ACCOUNT_COLUMNS, *resource.c)
            .select_from(Account).outerjoin(resource, true())
            .where(Account.id == bindparam("account_id")))
    return statement


def _account(row: Any) -> SigningAccount | None:
    if row is None:
        return None
    return SigningAccount(row.id, row.status, row.key_thumbprint, row.jwk_text, row.tos_agreed,
                          row.tos_agreed_url, row.eab_kid)


async def _run(conn: AsyncConnection, alone: Statement, if_key: bool, params: dict[str, Any],
               read: Read | None, key: str | None) -> Authenticated:
    """``alone`` (the account with its redemption), or the same with ``read`` of ``key``."""
    if read is None or key is None:
        row = (await alone.run(conn, params)).first()
        return Authenticated(_account(row), row is not None and row.fresh > 0)
    rows = (await _authenticated_read(read, if_key).run(conn, {**params, read.param: key})).all()
    row = rows[0] if rows else None
    return Authenticated(_account(row), row is not None and row.fresh > 0,
                         [r[_RESOURCE_COLUMN:] for r in rows if r[_RESOURCE_COLUMN] is not None])


def redeems_with_account(conn: AsyncConnection) -> bool:
    """Whether this database reads the account and redeems the nonce in one statement."""
    return conn.dialect.name == "postgresql"


async def redeem_nonce(conn: AsyncConnection, nonce: str, expires: dt.datetime | None) -> bool:
    """Record the nonce as used (in the caller's transaction, if any); False if it was used
    before. ``expires`` None: the nonce is not ours or has expired (nothing recorded)."""
    if expires is None:
        return False
    result = await _REDEEM[conn.dialect.name].run(conn, {"nonce": nonce, "expires": expires})
    return result.first() is not None


async def account(conn: AsyncConnection, account_id: str) -> SigningAccount | None:
    return _account((await _ACCOUNT.run(conn, {"account_id": account_id})).first())


async def account_and_redeem(conn: AsyncConnection, account_id: str, nonce: str, expires: dt.datetime | None,
                             read: Read | None = None, key: str | None = None) -> Authenticated:
    """The account and the nonce's redemption (in the caller's transaction: the caller checks the
    signature after it and rolls back a forgery); with ``read`` of ``key`` when the database does
    all three in one statement."""
    if expires is None or not redeems_with_account(conn):
        found = await account(conn, account_id)
        return Authenticated(found, await redeem_nonce(conn, nonce, expires))
    params = {"account_id": account_id, "nonce": nonce, "expires": expires}
    return await _run(conn, _ACCOUNT_AND_REDEEM, False, params, read, key)


async def account_and_redeem_if_key(conn: AsyncConnection, account_id: str, jwk_text: str, nonce: str,
                                    expires: dt.datetime, read: Read | None = None,
                                    key: str | None = None) -> Authenticated:
    """The account, and the nonce redeemed only if ``jwk_text`` (a key the caller has checked the
    signature with) is still the account's, and ``read`` of ``key``: one statement. Only where
    ``redeems_with_account``."""
    params = {"account_id": account_id, "nonce": nonce, "expires": expires, "jwk_text": jwk_text}
    return await _run(conn, _ACCOUNT_AND_REDEEM_IF_KEY, True, params, read, key)
