"""State transitions shared by the services, as conditional updates.

Each function runs inside the caller's transaction and is idempotent: applying the same
outcome twice (a redelivered job) changes nothing the second time.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any, cast

from cryptography import x509
from sqlalchemy import (
    JSON,
    Exists,
    Table,
    Update,
    bindparam,
    case,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

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


# The validator's outcome as three statements built once (Core, on the tables: no ORM work and
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


def _settle_orders_statement() -> Update:
    """Every pending order holding authorization ``p_authz_id``: ``invalid`` (with ``p_failure``)
    when one of its authorizations is neither valid nor pending or has expired (``p_now``), else
    ``ready`` when all are valid, else left pending (``refresh_order_status``, for all at once)."""
    held = _order_authzs.alias("held")
    authz = _authzs.alias("authz")

    def any_authorization(condition: ColumnElement[bool]) -> Exists:
        return exists().where(held.c.order_id == _orders.c.id, authz.c.id == held.c.authz_id, condition)

    failed = any_authorization(
        or_(
            authz.c.status.not_in([AuthzStatus.valid.value, AuthzStatus.pending.value]),
            authz.c.expires <= bindparam("p_now"),
        )
    )
    unfinished = any_authorization(authz.c.status != AuthzStatus.valid.value)
    return (
        update(_orders)
        .where(
            _orders.c.id.in_(select(_order_authzs.c.order_id).where(_order_authzs.c.authz_id == bindparam("p_authz_id"))),
            _orders.c.status == OrderStatus.pending.value,
            or_(failed, ~unfinished),
        )
        .values(
            status=case((failed, OrderStatus.invalid.value), else_=OrderStatus.ready.value),
            error=case((failed, bindparam("p_failure", type_=JSON)), else_=_orders.c.error),
            updated_at=bindparam("p_now"),
        )
    )


_SETTLE_ORDERS = _settle_orders_statement()


async def record_challenge_outcome(
    session: AsyncSession,
    challenge_id: str,
    error: dict[str, Any] | None,
    authz_lifetime: dt.timedelta,
) -> bool:
    """Finish a challenge that is ``processing``: valid when ``error`` is None, else invalid.

    The authorization follows the challenge, and every pending order holding that
    authorization becomes ``ready`` (all its authorizations valid) or ``invalid``.
    Returns False when the challenge was not processing (a duplicate job): nothing changed.
    Three statements: the challenge (``RETURNING`` its authorization), the authorization, the orders.
    """
    now = utcnow()
    valid = error is None
    conn = await session.connection()
    authz_id = (
        await conn.execute(
            _FINISH_CHALLENGE,
            {
                "p_challenge_id": challenge_id,
                "p_status": ChallengeStatus.valid.value if valid else ChallengeStatus.invalid.value,
                "p_validated": now if valid else None,
                "p_error": error,
                "p_now": now,
            },
        )
    ).scalar_one_or_none()
    if authz_id is None:
        return False
    if valid:
        await conn.execute(_VALIDATE_AUTHZ, {"p_authz_id": authz_id, "p_expires": now + authz_lifetime})
    else:
        await conn.execute(_INVALIDATE_AUTHZ, {"p_authz_id": authz_id})
    await settle_pending_orders(session, authz_id, failure=error, now=now)
    return True


async def settle_pending_orders(
    session: AsyncSession, authz_id: str, failure: dict[str, Any] | None = None, now: dt.datetime | None = None
) -> None:
    """``refresh_order_status`` for every pending order holding ``authz_id``, in one UPDATE."""
    conn = await session.connection()
    await conn.execute(
        _SETTLE_ORDERS, {"p_authz_id": authz_id, "p_failure": failure or NO_LONGER_VALID, "p_now": now or utcnow()}
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
_INSERT_CERTIFICATE = insert(cast(Table, Certificate.__table__))


async def store_certificate(
    session: AsyncSession,
    order_id: str,
    chain_pem: str,
    serial_hex: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    alternate_chains_pem: list[str] | None = None,
) -> str | None:
    """Store the issued chain and mark the order valid. Returns the certificate id, or None when
    the order is no longer processing or already has a certificate (a duplicate job): the first
    one stands. Two statements: the order's conditional UPDATE (which locks it, ``RETURNING`` its
    account), then the certificate's INSERT."""
    certificate_id = new_id()
    now = utcnow()
    conn = await session.connection()
    account_id = (
        await conn.execute(_ORDER_ISSUED, {"p_order_id": order_id, "p_certificate_id": certificate_id, "p_now": now})
    ).scalar_one_or_none()
    if account_id is None:
        return None
    await conn.execute(
        _INSERT_CERTIFICATE,
        {
            "id": certificate_id,
            "ari_cert_id": ari_cert_id_of_pem(chain_pem),
            "order_id": order_id,
            "account_id": account_id,
            "serial": serial_hex,
            "chain_pem": chain_pem,
            "not_before": not_before,
            "not_after": not_after,
            "created_at": now,
            "alternate_chains_pem": alternate_chains_pem or None,
        },
    )
    return certificate_id


def ari_cert_id_of_pem(chain_pem: str) -> str | None:
    """RFC 9773 certID of the chain's leaf: AKI keyIdentifier and serial, base64url, dot-joined."""
    leaf = x509.load_pem_x509_certificate(chain_pem.encode())
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None
    if aki is None:
        return None
    serial = leaf.serial_number
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # DER INTEGER content
    encode = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    return f"{encode(aki)}.{encode(serial_bytes)}"


async def fail_order(session: AsyncSession, order_id: str, error: dict[str, Any]) -> bool:
    """Mark a processing order invalid with a problem (as data). False if it was not processing."""
    changed = await session.execute(
        update(Order)
        .where(Order.id == order_id, Order.status == OrderStatus.processing.value)
        .values(status=OrderStatus.invalid.value, error=error, updated_at=utcnow())
    )
    return bool(changed.rowcount)  # type: ignore[attr-defined]
