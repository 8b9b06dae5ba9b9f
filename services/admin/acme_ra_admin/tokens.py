"""Bearer tokens of the admin API and console (``acme-ra admin-token create``).

A token is shown once and stored as its SHA-256 only: 256 random bits need no slow hash. A token
has a scope (``operator``: everything; ``read-only``: reads only, 403 on a change) and may expire
(then 401, as a revoked one).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.models import AdminToken, AdminTokenScope, utcnow

# Every token starts with this, so that a leaked one is easy to recognise (and to grep for).
TOKEN_PREFIX = "acmera_"
# Bytes of randomness per token.
TOKEN_BYTES = 32
# ``last_used_at`` is written at most this often per token (seconds): reads stay reads.
LAST_USED_RESOLUTION_SECONDS = 60


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_live(row: AdminToken, now: dt.datetime | None = None) -> bool:
    """Neither revoked nor expired."""
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > (now or utcnow()))


def may_change(row: AdminToken) -> bool:
    """Whether the token's scope allows changes (anything but a read)."""
    return row.scope != AdminTokenScope.read_only.value


async def create_token(session: AsyncSession, label: str = "", scope: str = AdminTokenScope.operator.value,
                       expires_at: dt.datetime | None = None) -> tuple[AdminToken, str]:
    """A new token row and the token itself (never stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    row = AdminToken(token_sha256=token_sha256(token), label=label, scope=AdminTokenScope(scope).value,
                     expires_at=expires_at)
    session.add(row)
    await session.flush()
    return row, token


async def authenticate(session: AsyncSession, token: str) -> AdminToken | None:
    """The live token row ``token`` belongs to, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = token_sha256(token)
    row = (await session.execute(select(AdminToken).where(AdminToken.token_sha256 == digest))).scalar_one_or_none()
    now = utcnow()
    if row is None or not is_live(row, now) or not hmac.compare_digest(row.token_sha256, digest):
        return None
    if row.last_used_at is None or now - row.last_used_at > dt.timedelta(seconds=LAST_USED_RESOLUTION_SECONDS):
        row.last_used_at = now
    return row


async def expired(session: AsyncSession, token: str) -> bool:
    """Whether ``token`` is a known, unrevoked token past its expiry (for the log's words only)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return False
    row = (await session.execute(select(AdminToken).where(AdminToken.token_sha256 == token_sha256(token)))).scalar_one_or_none()
    return row is not None and row.revoked_at is None and not is_live(row)


async def live_token(session: AsyncSession, token_id: str) -> AdminToken | None:
    """The token row with this id, unless revoked or expired (console sessions name their token by id)."""
    row = await session.get(AdminToken, token_id)
    return row if row is not None and is_live(row) else None


async def list_tokens(session: AsyncSession) -> list[AdminToken]:
    return list((await session.execute(select(AdminToken).order_by(AdminToken.created_at))).scalars())


async def revoke_token(session: AsyncSession, token_id: str) -> bool:
    changed = await session.execute(
        update(AdminToken)
        .where(AdminToken.id == token_id, AdminToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(changed.rowcount)  # type: ignore[attr-defined]
