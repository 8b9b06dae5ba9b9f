"""Issued certificates, as the frontend serves them (RFC 8555 §7.4.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.fast import Statement
from acme_ra.db.models import Certificate, RenewalWindow
from acme_ra_frontend.repo.reads import Read


@dataclass(slots=True)
class CertificateRow:
    id: str
    account_id: str
    chain_pem: str
    alternate_chains_pem: list[Any] | None


CERTIFICATE_READ = Read(Statement(
    select(Certificate.id, Certificate.account_id, Certificate.chain_pem, Certificate.alternate_chains_pem)
    .where(Certificate.id == bindparam("certificate_id"))
), "certificate_id")


def certificate_from_rows(rows: Sequence[Any]) -> CertificateRow | None:
    return CertificateRow(*rows[0]) if rows else None


async def by_ari_id(session: AsyncSession, ari_cert_id: str) -> Certificate | None:
    return (await session.execute(select(Certificate).where(Certificate.ari_cert_id == ari_cert_id))).scalars().first()


async def renewal_window(session: AsyncSession, certificate_id: str) -> RenewalWindow | None:
    """The window stored for a certificate (relayed from its upstream, or renew-early's)."""
    return await session.get(RenewalWindow, certificate_id)


async def by_serial(session: AsyncSession, serial: str) -> Sequence[Certificate]:
    """The certificates with this serial (hex): one, unless two upstreams chose the same."""
    return (await session.execute(select(Certificate).where(Certificate.serial == serial))).scalars().all()


async def recent_ari_ids(session: AsyncSession, limit: int) -> list[str]:
    """The ARI certIDs of the latest ``limit`` certificates."""
    return [str(v) for v in (await session.execute(
        select(Certificate.ari_cert_id)
        .where(Certificate.ari_cert_id.is_not(None))
        .order_by(Certificate.created_at.desc())
        .limit(limit)
    )).scalars()]
