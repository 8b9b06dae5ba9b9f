"""Keys known to be compromised: once a certificate is revoked for keyCompromise (reason 1), its
public key is refused as an account key (newAccount, keyChange: badPublicKey) and in CSRs
(finalize: badCSR), as Boulder does. Keys are compared by the SHA-256 of their DER
SubjectPublicKeyInfo. The signer records the block in the transaction that records the
revocation, so a revocation is never recorded without its block.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from acme_ra.db.fast import Statement
from acme_ra.db.models import BlockedKey

# RFC 5280 CRLReason keyCompromise.
KEY_COMPROMISE = 1


def spki_sha256(public_key: Any) -> str:
    """The key's fingerprint as blocked_keys stores it (a `cryptography` public key)."""
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


_IS_BLOCKED = Statement(select(BlockedKey.spki_sha256).where(BlockedKey.spki_sha256 == bindparam("spki_sha256")))


async def is_blocked(db: AsyncConnection | AsyncSession, public_key: Any) -> bool:
    params = {"spki_sha256": spki_sha256(public_key)}
    if isinstance(db, AsyncSession):
        found = await db.execute(_IS_BLOCKED.statement, params)
    else:
        found = await _IS_BLOCKED.run(db, params)
    return found.first() is not None


async def block(db: AsyncConnection | AsyncSession, public_key: Any, certificate_id: str | None) -> None:
    """Block a key (a no-op when it is already blocked)."""
    connection = await db.connection() if isinstance(db, AsyncSession) else db
    dialect = connection.dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    await db.execute(
        insert(BlockedKey)
        .values(spki_sha256=spki_sha256(public_key), certificate_id=certificate_id)
        .on_conflict_do_nothing(index_elements=[BlockedKey.spki_sha256])
    )
