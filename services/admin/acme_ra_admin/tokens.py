"""Bearer tokens of the admin API and console (``acme-ra admin-token create``).

A token is shown once and stored as its SHA-256 only: 256 random bits need no slow hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.models import AdminToken, utcnow

# Every token starts with this, so that a leaked one is easy to recognise (and to grep for).
TOKEN_PREFIX = "acmera_"
# Bytes of randomness per token.
TOKEN_BYTES = 32
# ``last_used_at`` is written at most this often per token (seconds): reads stay reads.
LAST_USED_RESOLUTION_SECONDS = 60


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(session: AsyncSession, label: str = "") -> tuple[AdminToken, str]:
    """A new token row and the token itself (never stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    row = AdminToken(token_sha256=token_sha256(token), label=label)
    session.add(row)
    await session.flush()
    return row, token


async def authenticate(session: AsyncSession, token: str) -> AdminToken | None:
    """The live token row ``token`` belongs to, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = token_sha256(token)
    row = (await session.execute(select(AdminToken).where(AdminToken.token_sha256 == digest))).scalar_one_or_none()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > dt.timedelta(seconds=LAST_USED_RESOLUTION_SECONDS):
        row.last_used_at = now
    return row


async def live_token(session: AsyncSession, token_id: str) -> AdminToken | None:
    """The token row with this id, unless revoked (console sessions name their token by id)."""
    row = await session.get(AdminToken, token_id)
    return row if row is not None and row.revoked_at is None else None


async def list_tokens(session: AsyncSession) -> list[AdminToken]:
    return list((await session.execute(select(AdminToken).order_by(AdminToken.created_at))).scalars())


async def revoke_token(session: AsyncSession, token_id: str) -> bool:
    changed = await session.execute(
        update(AdminToken)
        .where(AdminToken.id == token_id, AdminToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(changed.rowcount)  # type: ignore[attr-defined]
