"""The PostgreSQL pool without pre-ping: a connection that died (PostgreSQL restarted, the backend
terminated) fails one transaction with a disconnect error, which the frontend answers 503 and a
worker retries; the pool then replaces every connection. A connection idle for
POOL_PING_IDLE_SECONDS is pinged first and replaced without an error."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy import text

from acme_ra.db import engine as engine_module
from acme_ra.db.engine import Database
from acme_ra_frontend.app import is_unavailable
from tests.support import database

pytestmark = pytest.mark.skipif(database.backend() != "postgresql", reason="PostgreSQL's pool (ACME_RA_TEST_DATABASE_URL)")


async def backend_pid(db: Database) -> int:
    async with db.transaction() as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(url: str, pid: int) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await connection.close()


async def test_a_dead_connection_fails_once_as_an_outage_then_the_pool_recovers(fresh_database_url: str) -> None:
    db = Database(fresh_database_url, pool_size=2)
    try:
        first = await backend_pid(db)
        await terminate(fresh_database_url, first)
        with pytest.raises(sqlalchemy.exc.DBAPIError) as failed:
            await backend_pid(db)
        assert failed.value.connection_invalidated
        assert is_unavailable(failed.value)  # the frontend: 503 + Retry-After, not 500
        assert await backend_pid(db) != first
    finally:
        await db.dispose()


async def test_an_idle_connection_is_pinged_and_replaced(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(fresh_database_url, pool_size=2)
    try:
        first = await backend_pid(db)
        monkeypatch.setattr(engine_module, "POOL_PING_IDLE_SECONDS", 0.0)
        await terminate(fresh_database_url, first)
        assert await backend_pid(db) != first  # no error: the ping found it dead
    finally:
        await db.dispose()


async def test_a_busy_connection_is_not_pinged(fresh_database_url: str) -> None:
    db = Database(fresh_database_url, pool_size=2)
    pings = 0
    do_ping = db.engine.sync_engine.dialect.do_ping

    def counted(connection: object) -> bool:
        nonlocal pings
        pings += 1
        return bool(do_ping(connection))

    db.engine.sync_engine.dialect.do_ping = counted  # type: ignore[method-assign]
    try:
        for _ in range(5):
            await backend_pid(db)
        assert pings == 0
    finally:
        await db.dispose()
