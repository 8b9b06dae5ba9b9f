"""Every SQL statement of the admin API, console and CLI (reads, and the few writes they make)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import String, cast, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db import inventory
from acme_ra.db.models import (
    Account,
    AccountStatus,
    Authorization,
    AuthzStatus,
    Certificate,
    Challenge,
    EabKey,
    Order,
    OrderAuthorization,
    OrderStatus,
    UpstreamAccount,
    UpstreamOrder,
    UpstreamOrderState,
    utcnow,
)

# Rows a list returns when the caller does not say (and the most it may ask for).
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# A search that could be a serial number: hex digits, optionally in colon- or space-separated pairs.
SERIAL_PATTERN = re.compile(r"[0-9a-fA-F]+([: ][0-9a-fA-F]+)*")


def normal_serial(text: str) -> str | None:
    """A serial as stored (lowercase hex, no leading zeros) from one as people write it
    (any case, colons or spaces optional, leading zeros), or None if ``text`` is not hex."""
    text = text.strip()
    if not SERIAL_PATTERN.fullmatch(text):
        return None
    return text.replace(":", "").replace(" ", "").lower().lstrip("0") or "0"


def _name_matches(text: str) -> Any:
    """An order whose identifiers contain ``text`` (any case): a substring of the JSON they are
    stored as, so "physics.example.edu" finds "www.physics.example.edu"."""
    return func.lower(cast(Order.identifiers, String)).contains(text.strip().lower(), autoescape=True)


def _search(text: str) -> Any:
    """Certificates (joined with their order) whose names contain ``text``, or whose serial it is."""
    serial = normal_serial(text)
    return or_(_name_matches(text), Certificate.serial == serial) if serial else _name_matches(text)


async def list_accounts(session: AsyncSession, status: str | None, limit: int, offset: int = 0) -> list[Account]:
    query = select(Account).order_by(Account.created_at.desc(), Account.id)
    if status:
        query = query.where(Account.status == status)
    return list((await session.execute(query.limit(limit).offset(offset))).scalars())


async def account_counts(session: AsyncSession, account_id: str) -> tuple[int, int]:
    """(orders, certificates) of one account."""
    orders = await session.scalar(select(func.count()).select_from(Order).where(Order.account_id == account_id))
    certs = await session.scalar(
        select(func.count()).select_from(Certificate).where(Certificate.account_id == account_id)
    )
    return int(orders or 0), int(certs or 0)


async def revoke_account(session: AsyncSession, account_id: str) -> bool:
    """Server-initiated deactivation (RFC 8555 §7.1.6: status ``revoked``); its pending
    authorizations and unfinished orders go with it, as with a client's own deactivation."""
    changed = await session.execute(
        update(Account)
        .where(Account.id == account_id, Account.status == AccountStatus.valid.value)
        .values(status=AccountStatus.revoked.value)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        return False
    await session.execute(
        update(Authorization)
        .where(Authorization.account_id == account_id, Authorization.status == AuthzStatus.pending.value)
        .values(status=AuthzStatus.deactivated.value)
    )
    await session.execute(
        update(Order)
        .where(Order.account_id == account_id, Order.status.in_([OrderStatus.pending.value, OrderStatus.ready.value]))
        .values(status=OrderStatus.invalid.value,
                error={"type": "unauthorized", "detail": "account deactivated by an administrator"})
    )
    return True


async def get_eab_key(session: AsyncSession, kid: str) -> EabKey | None:
    return await session.get(EabKey, kid)


async def list_orders(
    session: AsyncSession, status: str | None, account_id: str | None, limit: int, offset: int = 0,
    search: str | None = None,
) -> list[Order]:
    """Newest first; ``search``: a name (or part of one) among the order's identifiers."""
    query = select(Order).order_by(Order.created_at.desc(), Order.id)
    if search and search.strip():
        query = query.where(_name_matches(search))
    if status:
        query = query.where(Order.status == status)
    if account_id:
        query = query.where(Order.account_id == account_id)
    return list((await session.execute(query.limit(limit).offset(offset))).scalars())


async def order_authorizations(session: AsyncSession, order_id: str) -> list[tuple[Authorization, list[Challenge]]]:
    authzs = list(
        (
            await session.execute(
                select(Authorization)
                .join(OrderAuthorization, OrderAuthorization.authz_id == Authorization.id)
                .where(OrderAuthorization.order_id == order_id)
                .order_by(OrderAuthorization.position)
            )
        ).scalars()
    )
    challenges = list(
        (
            await session.execute(
                select(Challenge).where(Challenge.authz_id.in_([a.id for a in authzs])).order_by(Challenge.type)
            )
        ).scalars()
    ) if authzs else []
    return [(authz, [c for c in challenges if c.authz_id == authz.id]) for authz in authzs]


async def list_certificates(session: AsyncSession, wanted: inventory.CertificateFilter, limit: int,
                            offset: int = 0, search: str | None = None,
                            ) -> list[tuple[Certificate, str, str | None, str | None]]:
    """(certificate, upstream, profile, EAB kid) rows: soonest expiry first when the filter asks for
    what expires, else newest first (acme_ra.db.inventory). ``search``: a name (or part of one)
    of the certificate's order, or its serial (hex, any case, colons optional)."""
    query = inventory.certificates_query(wanted, utcnow())
    if search and search.strip():
        query = query.where(_search(search))
    query = query.limit(limit).offset(offset)
    return [(row[0], row[1], row[2], row[3]) for row in (await session.execute(query)).all()]


async def find_certificates(session: AsyncSession, id_or_serial: str) -> list[Certificate]:
    """By id, else by serial (hex, any case, with or without colons and leading zeros)."""
    row = await session.get(Certificate, id_or_serial)
    if row is not None:
        return [row]
    serial = normal_serial(id_or_serial) or id_or_serial.replace(":", "").lower().lstrip("0") or "0"
    return list((await session.execute(select(Certificate).where(Certificate.serial == serial))).scalars())


async def upstream_accounts(session: AsyncSession) -> list[UpstreamAccount]:
    return list(
        (await session.execute(select(UpstreamAccount).order_by(UpstreamAccount.upstream, UpstreamAccount.created_at))).scalars()
    )


async def upstream_order_states(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(UpstreamOrder.state, func.count()).group_by(UpstreamOrder.state))
    return {state: int(count) for state, count in rows.all()}


async def upstream_validations_pending(session: AsyncSession) -> dict[str, tuple[int, int]]:
    """Per upstream: (upstream orders whose authorizations are being proved now, dns-01 TXT
    records the journal holds for them). The rows are those in flight: a handful."""
    rows = await session.execute(
        select(UpstreamOrder.upstream, UpstreamOrder.dns_records).where(
            UpstreamOrder.state == UpstreamOrderState.pending.value
        )
    )
    pending: dict[str, tuple[int, int]] = {}
    for upstream, records in rows.all():
        orders, published = pending.get(upstream, (0, 0))
        pending[upstream] = (orders + 1, published + len(records or ()))
    return pending


async def upstream_last_failures(session: AsyncSession) -> list[UpstreamOrder]:
    """Per upstream, its most recently failed (``invalid``) upstream order."""
    latest = (
        select(
            UpstreamOrder.order_id,
            func.row_number()
            .over(partition_by=UpstreamOrder.upstream,
                  order_by=(UpstreamOrder.updated_at.desc(), UpstreamOrder.order_id.desc()))
            .label("rank"),
        )
        .where(UpstreamOrder.state == UpstreamOrderState.invalid.value)
        .subquery()
    )
    query = (
        select(UpstreamOrder)
        .join(latest, latest.c.order_id == UpstreamOrder.order_id)
        .where(latest.c.rank == 1)
        .order_by(UpstreamOrder.upstream)
    )
    return list((await session.execute(query)).scalars())


async def order_statuses(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(Order.status, func.count()).group_by(Order.status))
    return {status: int(count) for status, count in rows.all()}
