"""acme_ra.db.fast.Statement: the same rows, values and transactions as SQLAlchemy gives, on either
back end (on PostgreSQL the statement runs straight on asyncpg; on SQLite through SQLAlchemy)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from acme_ra.db.engine import Database
from acme_ra.db.fast import Statement
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import Account, RedeemedNonce
from acme_ra_frontend.errors import is_unavailable
from tests.support import database

WHEN = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)

_INSERT_ACCOUNT = Statement(insert(Account), ["id", "key_thumbprint", "jwk", "status", "contact", "tos_agreed",
                                              "created_at"])
_ACCOUNTS = Statement(
    select(Account.id, Account.jwk, Account.created_at)
    .where(Account.id.in_(bindparam("ids", expanding=True)) | Account.key_thumbprint.in_(bindparam("ids")),
           Account.status.in_(["valid", "deactivated"]), Account.id.not_in(["nobody"]))
    .order_by(Account.id)
)
_DEACTIVATE = Statement(update(Account).where(Account.id.in_(bindparam("ids", expanding=True)))
                        .values(status="deactivated"))
_NONCE_COUNT = Statement(select(RedeemedNonce.nonce))
_INSERT_NONCE = Statement(insert(RedeemedNonce).values(nonce=bindparam("nonce"), expires_at=bindparam("expires")))


def account(number: int) -> dict[str, object]:
    return {"id": f"a{number}", "key_thumbprint": f"t{number}", "jwk": {"kty": "EC", "n": number},
            "status": "valid", "contact": [], "tos_agreed": True, "created_at": WHEN + dt.timedelta(hours=number)}


@pytest.fixture
def migrated_url(fresh_database_url: str) -> str:
    upgrade(fresh_database_url)
    return fresh_database_url


@pytest.fixture
async def db(migrated_url: str):  # type: ignore[no-untyped-def]
    db = Database(migrated_url, pool_size=2)
    yield db
    await db.dispose()


async def test_rows_values_and_rowcounts_as_sqlalchemy_gives_them(db: Database) -> None:
    async with db.engine.begin() as conn:
        await _INSERT_ACCOUNT.run(conn, [account(1), account(2), account(3)])  # executemany
    async with db.autocommit() as conn:
        # one expanding list used twice, a literal IN list and a NOT IN list in one statement
        rows = (await _ACCOUNTS.run(conn, {"ids": ["a1", "t3"]})).all()
        assert [row.id for row in rows] == ["a1", "a3"]
        assert rows[0].jwk == {"kty": "EC", "n": 1}  # JSON decoded
        assert rows[1].created_at == WHEN + dt.timedelta(hours=3)  # UTCDateTime: aware UTC again
        assert rows[1][0] == "a3" and tuple(rows[1])[2].tzinfo is not None
        assert (await _ACCOUNTS.run(conn, {"ids": []})).first() is None
        assert (await _DEACTIVATE.run(conn, {"ids": ["a1", "a2", "zz"]})).rowcount == 2
    async with db.sessions() as session:
        statuses = (await session.execute(select(Account.status).order_by(Account.id))).scalars().all()
    assert statuses == ["deactivated", "deactivated", "valid"]


async def test_a_statement_joins_the_connections_transaction(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.engine.begin() as conn:
            await _INSERT_NONCE.run(conn, {"nonce": "n1", "expires": WHEN})  # the first statement of it
            await conn.execute(insert(RedeemedNonce).values(nonce="n2", expires_at=WHEN))
            raise RuntimeError("roll back")
    async with db.engine.begin() as conn:
        await conn.execute(insert(RedeemedNonce).values(nonce="n3", expires_at=WHEN))  # SQLAlchemy began it
        await _INSERT_NONCE.run(conn, {"nonce": "n4", "expires": WHEN})
    async with db.autocommit() as conn:
        assert sorted(row.nonce for row in (await _NONCE_COUNT.run(conn, {})).all()) == ["n3", "n4"]


@pytest.mark.skipif(database.backend() != "postgresql", reason="asyncpg's own connection (PostgreSQL)")
async def test_a_lost_connection_is_an_outage_and_the_pool_recovers(db: Database, fresh_database_url: str) -> None:
    async def pid_of(conn: AsyncConnection) -> int:
        raw = await conn.get_raw_connection()
        assert raw.driver_connection is not None
        return int(raw.driver_connection.get_server_pid())

    async def terminate(pid: int) -> None:
        admin = await asyncpg.connect(fresh_database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # the client reads the server's goodbye

    async with db.autocommit() as conn:
        idle = await pid_of(conn)
    await terminate(idle)
    async with db.autocommit() as conn:  # ended while idle: replaced before use, no error at all
        assert (await _NONCE_COUNT.run(conn, {})).all() == []
        assert await pid_of(conn) != idle
    with pytest.raises(Exception) as failed:
        async with db.autocommit() as conn:  # ended while in use: the statement fails
            await terminate(await pid_of(conn))
            await _NONCE_COUNT.run(conn, {})
    assert is_unavailable(failed.value)  # the frontend answers 503 + Retry-After
    async with db.autocommit() as conn:  # the dead connection was not put back
        assert (await _NONCE_COUNT.run(conn, {})).all() == []
