"""The hot paths' statements (``acme_ra.db.fast``: asyncpg on PostgreSQL) and the rows they give.

Every ACME request polls or changes an order, an authorization or a challenge; these statements
are built once, read a resource with what hangs off it in one round trip (an authorization with
its challenges, an order with its authorization ids) and change state with conditional updates.
The ORM session stays for the rare paths (accounts, revocation, deactivation). Parameters of
UPDATE statements are named ``b_*`` (SQLAlchemy reserves the column names there).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, column, exists, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from acme_ra.db.fast import Statement
from acme_ra.db.models import (
    Authorization,
    AuthzStatus,
    BlockedKey,
    Certificate,
    Challenge,
    ChallengeStatus,
    Order,
    OrderAuthorization,
    OrderStatus,
    RateCounter,
)
from acme_ra_frontend import ratelimits


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


@dataclass(slots=True)
class OrderRow:
    id: str
    account_id: str
    provisioner: str
    status: str
    expires: dt.datetime
    identifiers: list[Any]
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    error: dict[str, Any] | None
    certificate_id: str | None
    profile: str | None
    replaces: str | None


@dataclass(slots=True)
class CertificateRow:
    id: str
    account_id: str
    chain_pem: str
    alternate_chains_pem: list[Any] | None


_AUTHZ_COLUMNS = (Authorization.id, Authorization.account_id, Authorization.identifier_type,
                  Authorization.identifier_value, Authorization.wildcard, Authorization.status, Authorization.expires)
_CHALLENGE_COLUMNS = (Challenge.id, Challenge.authz_id, Challenge.type, Challenge.token, Challenge.status,
                      Challenge.validated, Challenge.error)
_ORDER_COLUMNS = (Order.id, Order.account_id, Order.provisioner, Order.status, Order.expires, Order.identifiers,
                  Order.not_before, Order.not_after, Order.error, Order.certificate_id, Order.profile, Order.replaces)



@dataclass(frozen=True, slots=True, eq=False)
class Read:
    """How a route reads its resource: one statement, keyed by the path parameter of the same name,
    whose first column is the resource's id. The rows come unordered: the functions below order
    them. On PostgreSQL ``plumbing`` may run the read inside the statement that authenticates the
    request (one round trip for both) and hand the rows over as ``AcmeCall.prefetched``."""

    statement: Statement
    param: str

    async def rows(self, conn: AsyncConnection, key: str) -> list[Any]:
        return (await self.statement.run(conn, {self.param: key})).all()


AUTHZ_READ = Read(Statement(
    select(*_AUTHZ_COLUMNS, *_CHALLENGE_COLUMNS)
    .outerjoin(Challenge, Challenge.authz_id == Authorization.id)
    .where(Authorization.id == bindparam("authz_id"))
), "authz_id")
ORDER_READ = Read(Statement(
    select(*_ORDER_COLUMNS, OrderAuthorization.authz_id, OrderAuthorization.position)
    .outerjoin(OrderAuthorization, OrderAuthorization.order_id == Order.id)
    .where(Order.id == bindparam("order_id"))
), "order_id")
CERTIFICATE_READ = Read(Statement(
    select(Certificate.id, Certificate.account_id, Certificate.chain_pem, Certificate.alternate_chains_pem)
    .where(Certificate.id == bindparam("certificate_id"))
), "certificate_id")
_CHALLENGE = Statement(select(*_CHALLENGE_COLUMNS).where(Challenge.id == bindparam("challenge_id")))

_EXPIRE_AUTHZ = Statement(
    update(Authorization)
    .where(Authorization.id == bindparam("b_authz_id"),
           Authorization.status.in_([AuthzStatus.pending.value, AuthzStatus.valid.value]))
    .values(status=AuthzStatus.expired.value)
)
_EXPIRE_ORDER = Statement(
    update(Order)
    .where(Order.id == bindparam("b_order_id"), Order.status.in_([OrderStatus.pending.value, OrderStatus.ready.value]))
    .values(status=OrderStatus.invalid.value, error=bindparam("b_error"), updated_at=bindparam("b_now"))
)
_other = Challenge.__table__.alias("other")
# pending → processing, unless another challenge of the authorization is already processing.
_CLAIM_CHALLENGE = Statement(
    update(Challenge)
    .where(
        Challenge.id == bindparam("b_challenge_id"),
        Challenge.status == ChallengeStatus.pending.value,
        ~exists().where(_other.c.authz_id == bindparam("b_authz_id"),
                        _other.c.status == ChallengeStatus.processing.value),
    )
    .values(status=ChallengeStatus.processing.value, updated_at=bindparam("b_now"))
)
_DEACTIVATE_AUTHZ = Statement(
    update(Authorization).where(Authorization.id == bindparam("b_authz_id")).values(status=AuthzStatus.deactivated.value)
)
# ready → processing with the CSR, unless the CSR's key is blocked (blocked_keys).
_CLAIM_FINALIZE = Statement(
    update(Order)
    .where(Order.id == bindparam("b_order_id"), Order.status == OrderStatus.ready.value,
           ~exists().where(BlockedKey.spki_sha256 == bindparam("b_spki_sha256")))
    .values(status=OrderStatus.processing.value, csr=bindparam("b_csr"), updated_at=bindparam("b_now"))
)


def authz_from_rows(rows: Sequence[Any]) -> tuple[AuthzRow, list[ChallengeRow]] | None:
    """An authorization and its challenges (by type) from ``AUTHZ_READ``'s rows."""
    if not rows:
        return None
    authz = AuthzRow(*rows[0][:7])
    challenges = sorted((ChallengeRow(*row[7:]) for row in rows if row[7] is not None), key=lambda c: c.type)
    return authz, challenges


def order_from_rows(rows: Sequence[Any]) -> tuple[OrderRow, list[str]] | None:
    """An order and its authorization ids (in the order's order) from ``ORDER_READ``'s rows."""
    if not rows:
        return None
    linked = sorted((row for row in rows if row[12] is not None), key=lambda row: row[13])
    return OrderRow(*rows[0][:12]), [row[12] for row in linked]


def certificate_from_rows(rows: Sequence[Any]) -> CertificateRow | None:
    return CertificateRow(*rows[0]) if rows else None


async def authz_with_challenges(conn: AsyncConnection, authz_id: str) -> tuple[AuthzRow, list[ChallengeRow]] | None:
    return authz_from_rows(await AUTHZ_READ.rows(conn, authz_id))


async def order_with_authz_ids(conn: AsyncConnection, order_id: str) -> tuple[OrderRow, list[str]] | None:
    return order_from_rows(await ORDER_READ.rows(conn, order_id))


async def challenge(conn: AsyncConnection, challenge_id: str) -> ChallengeRow | None:
    row = (await _CHALLENGE.run(conn, {"challenge_id": challenge_id})).first()
    return None if row is None else ChallengeRow(*row)


async def certificate(conn: AsyncConnection, certificate_id: str) -> CertificateRow | None:
    return certificate_from_rows(await CERTIFICATE_READ.rows(conn, certificate_id))


async def expire_authz(conn: AsyncConnection, authz_id: str) -> None:
    await _EXPIRE_AUTHZ.run(conn, {"b_authz_id": authz_id})


async def expire_order(conn: AsyncConnection, order_id: str, error: dict[str, Any], now: dt.datetime) -> None:
    await _EXPIRE_ORDER.run(conn, {"b_order_id": order_id, "b_error": error, "b_now": now})


async def claim_challenge(conn: AsyncConnection, challenge_id: str, authz_id: str, now: dt.datetime) -> bool:
    """pending → processing in one statement; False if it was not pending or another challenge of
    the authorization is processing."""
    result = await _CLAIM_CHALLENGE.run(conn, {"b_challenge_id": challenge_id, "b_authz_id": authz_id,
                                               "b_now": now})
    return bool(result.rowcount)


async def deactivate_authz(conn: AsyncConnection, authz_id: str) -> None:
    await _DEACTIVATE_AUTHZ.run(conn, {"b_authz_id": authz_id})


# PostgreSQL, finalize with rate limits: their counters (ratelimits.SPENT_CTES) and the claim in
# one statement, the claim conditional on every count being within its limit.
_SPEND_AND_CLAIM_FINALIZE = Statement(text(f"""
WITH {ratelimits.SPENT_CTES}, claimed AS (
    UPDATE orders SET status = :processing, csr = :csr, updated_at = :now
    WHERE id = :order_id AND status = :ready
      AND NOT EXISTS (SELECT 1 FROM blocked_keys WHERE spki_sha256 = :spki_sha256)
      AND EXISTS (SELECT 1 FROM allowed)
    RETURNING id
)
SELECT spent.key, spent.count, (SELECT count(*) FROM claimed) AS claimed FROM spent
""").bindparams(*ratelimits.SPENT_BINDS, bindparam("now", type_=Order.updated_at.type))
    .columns(RateCounter.key, RateCounter.count, column("claimed", Integer)))


async def claim_finalize(conn: AsyncConnection, order_id: str, csr: bytes, spki_sha256: str, now: dt.datetime,
                         limits: Sequence[ratelimits.Spend] = ()) -> bool:
    """ready → processing with the CSR; False if another request finalized it first or the CSR's
    key (``spki_sha256``) is blocked. The counters of ``limits`` (of one window) are spent first,
    in the claim's own statement on PostgreSQL; when one is exceeded nothing is claimed and its
    ``rateLimited`` is raised."""
    limits = ratelimits.active(limits)
    if limits and conn.dialect.name == "postgresql":
        rows = (await _SPEND_AND_CLAIM_FINALIZE.run(conn, {
            **ratelimits.spent_params(limits, now), "processing": OrderStatus.processing.value,
            "ready": OrderStatus.ready.value, "order_id": order_id, "csr": csr, "spki_sha256": spki_sha256,
            "now": now,
        })).all()
        ratelimits.check_spent(limits, rows, now)
        return bool(rows[0].claimed)
    for limit in limits:
        await ratelimits.spend(conn, limit)
    result = await _CLAIM_FINALIZE.run(conn, {"b_order_id": order_id, "b_csr": csr, "b_spki_sha256": spki_sha256,
                                              "b_now": now})
    return bool(result.rowcount)
