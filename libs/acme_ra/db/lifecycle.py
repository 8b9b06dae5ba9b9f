"""State transitions shared by the services, as conditional updates.

Each function runs inside the caller's transaction and is idempotent: applying the same
outcome twice (a redelivered job) changes nothing the second time. The hot ones (the validator's
outcome, the signer's certificate and failure) take an ORM session or, cheaper, a Core
connection (``Database.autocommit`` or ``engine.begin()``), and run statements built once at import
(the validator's straight on asyncpg on PostgreSQL: ``acme_ra.db.fast.Statement``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any, cast

from cryptography import x509
from sqlalchemy import (
    CTE,
    JSON,
    Exists,
    Insert,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from acme_ra.db.fast import Statement
from acme_ra.db.models import (
    Authorization,
    AuthzStatus,
    Certificate,
    Challenge,
    ChallengeStatus,
    Order,
    OrderAuthorization,
    OrderStatus,
    new_id,
    utcnow,
)

# An order whose authorization was lost some other way than a failed challenge.
NO_LONGER_VALID: dict[str, Any] = {
    "type": "unauthorized",
    "detail": "an authorization of this order is no longer valid",
}


# A session (its connection is used) or a Core connection.
Executor = AsyncSession | AsyncConnection


async def _connection(executor: Executor) -> AsyncConnection:
    return executor if isinstance(executor, AsyncConnection) else await executor.connection()


# The validator's outcome as three statements (one on PostgreSQL) built once (Core, on the tables: no ORM work and
# no cache key to compute per call). Parameters are named p_* (column names are reserved).
_challenges = cast(Table, Challenge.__table__)
_authzs = cast(Table, Authorization.__table__)
_orders = cast(Table, Order.__table__)
_order_authzs = cast(Table, OrderAuthorization.__table__)

_FINISH_CHALLENGE = (
    update(_challenges)
    .where(_challenges.c.id == bindparam("p_challenge_id"), _challenges.c.status == ChallengeStatus.processing.value)
    .values(
        status=bindparam("p_status"),
        validated=bindparam("p_validated"),
        error=bindparam("p_error"),
        updated_at=bindparam("p_now"),
    )
    .returning(_challenges.c.authz_id)
)
_PENDING_AUTHZ = (_authzs.c.id == bindparam("p_authz_id"), _authzs.c.status == AuthzStatus.pending.value)
_VALIDATE_AUTHZ = (
    update(_authzs).where(*_PENDING_AUTHZ).values(status=AuthzStatus.valid.value, expires=bindparam("p_expires"))
)
_INVALIDATE_AUTHZ = update(_authzs).where(*_PENDING_AUTHZ).values(status=AuthzStatus.invalid.value)


def _settle_orders_statement(authz_id: ColumnElement[Any], changed: CTE | None = None) -> Update:
    """Every pending order holding authorization ``authz_id``: ``invalid`` (with ``p_failure``)
    when one of its authorizations is neither valid nor pending or has expired (``p_now``), else
    ``ready`` when all are valid, else left pending (``refresh_order_status``, for all at once).
    ``changed`` (id, status, expires), when given, overrides the authorizations it holds: what a
    data-modifying CTE of the same statement wrote, which the statement itself does not see."""
    held = _order_authzs.alias("held")
    authz = _authzs.alias("authz")
    holdings = held.join(authz, authz.c.id == held.c.authz_id)
    status: ColumnElement[Any] = authz.c.status
    expires: ColumnElement[Any] = authz.c.expires
    if changed is not None:
        holdings = holdings.outerjoin(changed, changed.c.id == authz.c.id)
        status, expires = func.coalesce(changed.c.status, status), func.coalesce(changed.c.expires, expires)

    def any_authorization(condition: ColumnElement[bool]) -> Exists:
        return exists().select_from(holdings).where(held.c.order_id == _orders.c.id, condition)

    failed = any_authorization(
        or_(
            # Two comparisons, not NOT IN [...]: acme_ra.db.fast numbers an expanding list once,
            # and this condition appears three times in the statement.
            and_(status != AuthzStatus.valid.value, status != AuthzStatus.pending.value),
            expires <= bindparam("p_now"),
        )
    )
    unfinished = any_authorization(status != AuthzStatus.valid.value)
    return (
        update(_orders)
        .where(
            _orders.c.id.in_(select(_order_authzs.c.order_id).where(_order_authzs.c.authz_id == authz_id)),
            _orders.c.status == OrderStatus.pending.value,
            or_(failed, ~unfinished),
        )
        .values(
            status=case((failed, OrderStatus.invalid.value), else_=OrderStatus.ready.value),
            error=case((failed, bindparam("p_failure", type_=JSON)), else_=_orders.c.error),
            updated_at=bindparam("p_now"),
        )
    )


_SETTLE_ORDERS = Statement(_settle_orders_statement(bindparam("p_authz_id")))


def _outcome_statement() -> Select[Any]:
    """PostgreSQL: the three statements of the outcome in one (data-modifying CTEs): the
    challenge, its authorization if pending (``p_authz_status``; ``p_expires`` when valid), the
    orders holding it as they stand once the authorization has changed. Selects the challenge's
    authorization, so no row means the challenge was not processing and nothing changed, and
    whether an order holding it was left pending (all sub-statements see the snapshot the
    statement started with, before the orders' UPDATE)."""
    challenge = _FINISH_CHALLENGE.cte("challenge")
    authz_id = select(challenge.c.authz_id).scalar_subquery()
    authz = (
        update(_authzs)
        .where(_authzs.c.id == authz_id, _authzs.c.status == AuthzStatus.pending.value)
        .values(
            status=bindparam("p_authz_status"),
            expires=func.coalesce(bindparam("p_expires", type_=_authzs.c.expires.type), _authzs.c.expires),
        )
        .returning(_authzs.c.id, _authzs.c.status, _authzs.c.expires)
        .cte("changed_authz")
    )
    settled = _settle_orders_statement(authz_id, changed=authz).returning(_orders.c.id).cte("settled")
    held, order = _order_authzs.alias("held_by"), _orders.alias("holder")
    left_pending = (
        exists()
        .select_from(held.join(order, order.c.id == held.c.order_id))
        .where(
            held.c.authz_id == challenge.c.authz_id,
            order.c.status == OrderStatus.pending.value,
            order.c.id.not_in(select(settled.c.id)),
        )
    )
    return select(challenge.c.authz_id, left_pending).add_cte(authz, settled)


_OUTCOME = Statement(_outcome_statement())


@dataclass(frozen=True)
class FinishedChallenge:
    """A challenge ``finish_challenge`` took out of ``processing``."""

    authz_id: str
    # PostgreSQL: an order holding the authorization is still pending as the outcome's statement
    # saw it (another authorization of it pending, perhaps being validated at this very moment
    # and not committed yet): look at it again once committed (``settle_pending_orders``).
    # Elsewhere False: writers take the database in turn, so the outcome saw every other one.
    orders_left_pending: bool
    # When it was validated (as stored), None when it became invalid.
    validated: dt.datetime | None = None


async def finish_challenge(
    session: Executor,
    challenge_id: str,
    error: dict[str, Any] | None,
    authz_lifetime: dt.timedelta,
) -> FinishedChallenge | None:
    """Finish a challenge that is ``processing``: valid when ``error`` is None, else invalid.

    The authorization follows the challenge, and every pending order holding that
    authorization becomes ``ready`` (all its authorizations valid) or ``invalid``.
    Returns None when the challenge was not processing (a duplicate job): nothing changed.
    Three statements: the challenge (``RETURNING`` its authorization), the authorization, the
    orders; on PostgreSQL the three in one (``_outcome_statement``: an autocommit connection will
    do), elsewhere in the caller's transaction (``Database.autocommit`` is one on SQLite).
    """
    now = utcnow()
    valid = error is None
    validated = now if valid else None
    conn = await _connection(session)
    challenge = {
        "p_challenge_id": challenge_id,
        "p_status": ChallengeStatus.valid.value if valid else ChallengeStatus.invalid.value,
        "p_validated": validated,
        "p_error": error,
        "p_now": now,
    }
    if conn.dialect.name == "postgresql":
        outcome = {
            "p_authz_status": AuthzStatus.valid.value if valid else AuthzStatus.invalid.value,
            "p_expires": now + authz_lifetime if valid else None,
            "p_failure": error or NO_LONGER_VALID,
        }
        row = (await _OUTCOME.run(conn, {**challenge, **outcome})).first()
        return None if row is None else FinishedChallenge(row[0], bool(row[1]), validated)
    authz_id = (await conn.execute(_FINISH_CHALLENGE, challenge)).scalar_one_or_none()
    if authz_id is None:
        return None
    if valid:
        await conn.execute(_VALIDATE_AUTHZ, {"p_authz_id": authz_id, "p_expires": now + authz_lifetime})
    else:
        await conn.execute(_INVALIDATE_AUTHZ, {"p_authz_id": authz_id})
    await settle_pending_orders(conn, authz_id, failure=error, now=now)
    return FinishedChallenge(authz_id, orders_left_pending=False, validated=validated)


async def record_challenge_outcome(
    session: Executor,
    challenge_id: str,
    error: dict[str, Any] | None,
    authz_lifetime: dt.timedelta,
) -> bool:
    """``finish_challenge``; False when the challenge was not processing (nothing changed)."""
    return await finish_challenge(session, challenge_id, error, authz_lifetime) is not None


async def settle_pending_orders(
    session: Executor, authz_id: str, failure: dict[str, Any] | None = None, now: dt.datetime | None = None
) -> None:
    """``refresh_order_status`` for every pending order holding ``authz_id``, in one UPDATE."""
    conn = await _connection(session)
    await _SETTLE_ORDERS.run(
        conn, {"p_authz_id": authz_id, "p_failure": failure or NO_LONGER_VALID, "p_now": now or utcnow()}
    )


async def refresh_order_status(
    session: AsyncSession, order_id: str, failure: dict[str, Any] | None = None
) -> str:
    """Derive a pending order's status from its authorizations; returns the new status."""
    now = utcnow()
    statuses = (
        await session.execute(
            select(Authorization.status, Authorization.expires)
            .join(OrderAuthorization, OrderAuthorization.authz_id == Authorization.id)
            .where(OrderAuthorization.order_id == order_id)
        )
    ).all()
    bad = [s for s, expires in statuses if s != AuthzStatus.valid.value and s != AuthzStatus.pending.value]
    expired = [1 for s, expires in statuses if expires <= now]
    if bad or expired:
        error = failure or NO_LONGER_VALID
        await session.execute(
            update(Order)
            .where(Order.id == order_id, Order.status.in_([OrderStatus.pending.value, OrderStatus.ready.value]))
            .values(status=OrderStatus.invalid.value, error=error, updated_at=now)
        )
        return OrderStatus.invalid.value
    if all(s == AuthzStatus.valid.value for s, _ in statuses):
        await session.execute(
            update(Order)
            .where(Order.id == order_id, Order.status == OrderStatus.pending.value)
            .values(status=OrderStatus.ready.value, updated_at=now)
        )
        return OrderStatus.ready.value
    return OrderStatus.pending.value


_ORDER_ISSUED = (
    update(_orders)
    .where(
        _orders.c.id == bindparam("p_order_id"),
        _orders.c.status == OrderStatus.processing.value,
        _orders.c.certificate_id.is_(None),
    )
    .values(status=OrderStatus.valid.value, certificate_id=bindparam("p_certificate_id"), updated_at=bindparam("p_now"))
    .returning(_orders.c.account_id)
)
_certificates = cast(Table, Certificate.__table__)
_INSERT_CERTIFICATE = insert(_certificates)
# What store_certificate writes of a certificate, beside its account (revocation columns: NULL).
_CERTIFICATE_FIELDS = (
    "id", "ari_cert_id", "names_sha256", "issuer", "order_id", "serial", "chain_pem", "not_before", "not_after",
    "created_at", "alternate_chains_pem",
)


def _issue_statement() -> Insert:
    """PostgreSQL: ``_ORDER_ISSUED`` and the certificate's INSERT in one statement (a
    data-modifying CTE): the certificate is inserted only when the order's UPDATE matched, with
    its account; ``RETURNING`` says whether it was. One round trip, so autocommit will do."""
    issued = _ORDER_ISSUED.cte("issued")
    names = list(_CERTIFICATE_FIELDS)
    # Named c_*: a parameter named after one of the orders' columns would be taken by the UPDATE.
    row = select(
        *(bindparam(f"c_{name}", type_=_certificates.c[name].type) for name in names), issued.c.account_id
    ).select_from(issued)
    return (
        insert(_certificates)
        .from_select([*names, "account_id"], row)
        .add_cte(issued)
        .returning(_certificates.c.id)
    )


_ISSUE = Statement(_issue_statement())


async def store_certificate(
    session: Executor,
    order_id: str,
    chain_pem: str,
    serial_hex: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    alternate_chains_pem: list[str] | None = None,
) -> str | None:
    """Store the issued chain and mark the order valid. Returns the certificate id, or None when
    the order is no longer processing or already has a certificate (a duplicate job): the first
    one stands. The order's conditional UPDATE (which locks it, ``RETURNING`` its account), then
    the certificate's INSERT: one statement on PostgreSQL (an autocommit connection will do),
    two on SQLite (in a transaction: ``Database.autocommit`` is one there)."""
    certificate_id = new_id()
    now = utcnow()
    conn = await _connection(session)
    leaf = x509.load_pem_x509_certificate(chain_pem.encode())
    certificate = dict(
        zip(
            _CERTIFICATE_FIELDS,
            (
                certificate_id,
                ari_cert_id(leaf),
                names_sha256(leaf),
                issuer_name(leaf),
                order_id,
                serial_hex,
                chain_pem,
                not_before,
                not_after,
                now,
                alternate_chains_pem or None,
            ),
            strict=True,
        )
    )
    order = {"p_order_id": order_id, "p_certificate_id": certificate_id, "p_now": now}
    if conn.dialect.name == "postgresql":
        values = {f"c_{name}": value for name, value in certificate.items()}
        inserted = (await _ISSUE.run(conn, {**values, **order})).first()
        return None if inserted is None else certificate_id
    account_id = (await conn.execute(_ORDER_ISSUED, order)).scalar_one_or_none()
    if account_id is None:
        return None
    await conn.execute(_INSERT_CERTIFICATE, {**certificate, "account_id": account_id})
    return certificate_id


def leaf_names(leaf: x509.Certificate) -> list[str]:
    """The leaf's SAN DNS names, then its IP addresses, as written ([] without a SAN)."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(value) for value in (*san.get_values_for_type(x509.DNSName), *san.get_values_for_type(x509.IPAddress))]


def names_sha256(leaf: x509.Certificate) -> str:
    """SHA-256 (hex) of the leaf's names (lower case, sorted, one per line): a renewal has the
    same, so the inventory tells a replaced certificate from one about to lapse."""
    return hashlib.sha256("\n".join(sorted(name.lower() for name in leaf_names(leaf))).encode()).hexdigest()


def issuer_name(leaf: x509.Certificate) -> str:
    """The leaf's issuer as an RFC 4514 string (cut to the column's 500 characters)."""
    return leaf.issuer.rfc4514_string()[:500]


def ari_cert_id(leaf: x509.Certificate) -> str | None:
    """RFC 9773 certID of the chain's leaf: AKI keyIdentifier and serial, base64url, dot-joined."""
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None
    if aki is None:
        return None
    serial = leaf.serial_number
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # DER INTEGER content
    return f"{_b64url(aki)}.{_b64url(serial_bytes)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_FAIL_ORDER = (
    update(_orders)
    .where(_orders.c.id == bindparam("p_order_id"), _orders.c.status == OrderStatus.processing.value)
    .values(status=OrderStatus.invalid.value, error=bindparam("p_error", type_=JSON), updated_at=bindparam("p_now"))
)


async def fail_order(session: Executor, order_id: str, error: dict[str, Any]) -> bool:
    """Mark a processing order invalid with a problem (as data). False if it was not processing.
    One statement: a Core connection in autocommit will do."""
    conn = await _connection(session)
    changed = await conn.execute(_FAIL_ORDER, {"p_order_id": order_id, "p_error": error, "p_now": utcnow()})
    return bool(changed.rowcount)
