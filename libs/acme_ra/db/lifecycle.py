"""State transitions shared by the services, as conditional updates.

Each function runs inside the caller's transaction and is idempotent: applying the same
outcome twice (a redelivered job) changes nothing the second time.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from cryptography import x509
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.models import (
    Authorization,
    AuthzStatus,
    Certificate,
    Challenge,
    ChallengeStatus,
    Order,
    OrderAuthorization,
    OrderStatus,
    utcnow,
)


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
    """
    now = utcnow()
    valid = error is None
    changed = await session.execute(
        update(Challenge)
        .where(Challenge.id == challenge_id, Challenge.status == ChallengeStatus.processing.value)
        .values(
            status=ChallengeStatus.valid.value if valid else ChallengeStatus.invalid.value,
            validated=now if valid else None,
            error=error,
            updated_at=now,
        )
    )
    if changed.rowcount == 0:  # type: ignore[attr-defined]
        return False
    authz_id = (
        await session.execute(select(Challenge.authz_id).where(Challenge.id == challenge_id))
    ).scalar_one()
    await session.execute(
        update(Authorization)
        .where(Authorization.id == authz_id, Authorization.status == AuthzStatus.pending.value)
        .values(
            status=AuthzStatus.valid.value if valid else AuthzStatus.invalid.value,
            **({"expires": now + authz_lifetime} if valid else {}),
        )
    )
    order_ids = (
        await session.execute(
            select(OrderAuthorization.order_id)
            .join(Order, Order.id == OrderAuthorization.order_id)
            .where(OrderAuthorization.authz_id == authz_id, Order.status == OrderStatus.pending.value)
        )
    ).scalars().all()
    for order_id in order_ids:
        await refresh_order_status(session, order_id, failure=None if valid else error)
    return True


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
        error = failure or {
            "type": "unauthorized",
            "detail": "an authorization of this order is no longer valid",
        }
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


async def store_certificate(
    session: AsyncSession,
    order_id: str,
    chain_pem: str,
    serial_hex: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> str | None:
    """Store the issued chain and mark the order valid. Returns the certificate id, or None when
    the order already has a certificate (a duplicate job): the first one stands."""
    order = (
        await session.execute(select(Order).where(Order.id == order_id).with_for_update())
    ).scalar_one()
    if order.status != OrderStatus.processing.value or order.certificate_id:
        return None
    certificate = Certificate(
        ari_cert_id=ari_cert_id_of_pem(chain_pem),
        order_id=order_id,
        account_id=order.account_id,
        serial=serial_hex,
        chain_pem=chain_pem,
        not_before=not_before,
        not_after=not_after,
    )
    session.add(certificate)
    await session.flush()
    order.status = OrderStatus.valid.value
    order.certificate_id = certificate.id
    order.updated_at = utcnow()
    return certificate.id


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
