"""The replicas' shared keys, the record of redeemed nonces (nonces.py), the readiness ping."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.engine import Database
from acme_ra.db.models import RedeemedNonce, ServerKey


async def insert_or_read_server_key(db: Database, name: str, sealed: bytes) -> bytes:
    """The stored value of the key ``name``: ``sealed``, stored now unless another replica stored
    its own first."""
    async with db.transaction() as session:
        insert = pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert
        await session.execute(insert(ServerKey).values(name=name, value=sealed).on_conflict_do_nothing())
        return bytes((await session.execute(select(ServerKey.value).where(ServerKey.name == name))).scalar_one())


async def purge_redeemed_before(db: Database, before: dt.datetime) -> int:
    async with db.transaction() as session:
        result = await session.execute(delete(RedeemedNonce).where(RedeemedNonce.expires_at < before))
        return result.rowcount or 0  # type: ignore[attr-defined]


async def count_redeemed(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(RedeemedNonce))).scalar_one())


async def ping(db: Database) -> None:
    """One round trip to the database (readiness)."""
    async with db.sessions() as session:
        await session.execute(select(1))
