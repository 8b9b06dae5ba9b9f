"""The PostgreSQL pool without pre-ping: a connection that died (PostgreSQL restarted, the backend
terminated) fails one transaction with a disconnect error, which the frontend answers 503 and a
worker retries; the pool then replaces every connection. A connection idle for
POOL_PING_IDLE_SECONDS is pinged first and replaced without an error."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.engine.interfaces import DBAPIConnection

from acme_ra.db import engine as engine_module
from acme_ra.db.engine import Database
from acme_ra_frontend.errors import is_unavailable
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

    def counted(connection: DBAPIConnection) -> bool:
        nonlocal pings
        pings += 1
        return bool(do_ping(connection))

    db.engine.sync_engine.dialect.do_ping = counted  # type: ignore[method-assign,assignment]  # counts the pings
    try:
        for _ in range(5):
            await backend_pid(db)
        assert pings == 0
    finally:
        await db.dispose()


async def autocommit_pid(db: Database) -> tuple[int, object]:
    async with db.autocommit() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()), conn


async def test_autocommit_connections_are_kept_between_uses(fresh_database_url: str) -> None:
    db = Database(fresh_database_url, pool_size=2)
    try:
        pid, conn = await autocommit_pid(db)
        assert await autocommit_pid(db) == (pid, conn)  # the same connection, not checked out again
        with pytest.raises(sqlalchemy.exc.ProgrammingError):
            async with db.autocommit() as used:
                assert used is conn
                await used.execute(text("SELECT * FROM no_such_table"))
        assert await autocommit_pid(db) == (pid, conn)  # a failed statement leaves it usable
        with pytest.raises(asyncio.CancelledError):
            async with db.autocommit() as used:
                raise asyncio.CancelledError  # perhaps mid-statement: back to the pool, reset there
        assert (await autocommit_pid(db))[1] is not conn
    finally:
        await db.dispose()
    assert conn.closed  # type: ignore[attr-defined]


async def test_a_kept_autocommit_connection_that_died_is_replaced_before_use(fresh_database_url: str) -> None:
    """Its server ended it while it was kept (PostgreSQL restarted, a failover): the client saw
    the socket close, so it is dropped and a new one used, no request failing for it. (One
    that dies while in use fails its statement: test_fast.)"""
    db = Database(fresh_database_url, pool_size=2)
    try:
        pid, _ = await autocommit_pid(db)
        await terminate(fresh_database_url, pid)
        await asyncio.sleep(0.2)  # the client reads the server's goodbye
        assert (await autocommit_pid(db))[0] != pid
    finally:
        await db.dispose()


async def test_a_kept_autocommit_connection_idle_too_long_is_pinged_by_the_pool(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(fresh_database_url, pool_size=2)
    try:
        pid, _ = await autocommit_pid(db)
        monkeypatch.setattr(engine_module, "POOL_PING_IDLE_SECONDS", 0.0)
        await terminate(fresh_database_url, pid)
        assert (await autocommit_pid(db))[0] != pid  # no error: given back, pinged, replaced
    finally:
        await db.dispose()
