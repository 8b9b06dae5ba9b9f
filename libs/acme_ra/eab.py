"""External Account Binding keys for acme-ra's own clients (RFC 8555 §7.3.4).

Operators create keys (``acme-ra eab create``); a client proves it holds one when it registers.
The HMAC key is shown once, stored sealed, and a key binds exactly one account.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.models import EabKey, utcnow
from acme_ra.sealing import Sealer

# Bytes of HMAC key material per EAB key (HS256 wants at least 32).
HMAC_KEY_BYTES = 32


def sealing_purpose(kid: str) -> str:
    return f"eab:{kid}"


@dataclass
class NewEabKey:
    kid: str
    hmac_key: str  # base64url, as clients expect it


async def create_key(
    session: AsyncSession,
    sealer: Sealer,
    label: str = "",
    policy: dict[str, Any] | None = None,
    profile: str | None = None,
) -> NewEabKey:
    kid = "kid-" + secrets.token_urlsafe(12)
    while True:  # a key printed as "-..." would be read as a command-line option by clients
        raw = secrets.token_bytes(HMAC_KEY_BYTES)
        if base64.urlsafe_b64encode(raw)[:1] not in (b"-", b"_"):
            break
    session.add(
        EabKey(
            kid=kid,
            hmac_key_sealed=sealer.seal(raw, sealing_purpose(kid)),
            label=label,
            policy=policy,
            profile=profile,
        )
    )
    await session.flush()
    return NewEabKey(kid, base64.urlsafe_b64encode(raw).rstrip(b"=").decode())


async def list_keys(session: AsyncSession) -> list[EabKey]:
    return list((await session.execute(select(EabKey).order_by(EabKey.created_at))).scalars())


async def revoke_key(session: AsyncSession, kid: str) -> bool:
    changed = await session.execute(
        update(EabKey).where(EabKey.kid == kid, EabKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return bool(changed.rowcount)  # type: ignore[attr-defined]
