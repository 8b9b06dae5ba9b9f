"""ACME_RA_DATABASE_URL with several hosts (acme_ra.db.multihost): libpq's host list read into
the form SQLAlchemy's asyncpg dialect takes; and, against a real primary and its streaming
standby, a Database given the standby first still writes on the primary, and a connection whose
server refuses writes (what a demoted primary does) is dropped and replaced, the caller seeing an
outage (503, a redelivered job) rather than a bug."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy.exc
from pydantic import ValidationError
from sqlalchemy import text

from acme_ra.config import ENV_PREFIX, Settings
from acme_ra.db import engine
from acme_ra.db.engine import Database, is_read_only_refusal
from acme_ra.db.multihost import hosts, sqlalchemy_url
from tests.support.lab import base_environment
from tests.support.postgres import PostgresServer


def test_a_host_list_becomes_host_arguments_with_read_write() -> None:
    url = "postgresql+asyncpg://acme:s%40cret@db1:5432,db2:6432/acme?ssl=require"
    assert sqlalchemy_url(url) == ("postgresql+asyncpg://acme:s%40cret@/acme?host=db1:5432&host=db2:6432"
                                   "&ssl=require&target_session_attrs=read-write")
    assert hosts(url) == [("db1", 5432), ("db2", 6432)]


def test_ports_default_and_the_operators_target_session_attrs_is_kept() -> None:
    url = "postgresql+asyncpg://acme@db1,db2/acme?target_session_attrs=primary"
    assert sqlalchemy_url(url) == "postgresql+asyncpg://acme@/acme?host=db1:5432&host=db2:5432&target_session_attrs=primary"


@pytest.mark.parametrize("url", [
    "postgresql+asyncpg://acme@db1:5432/acme",
    "postgresql+asyncpg://acme@/acme?host=db1:5432&host=db2:5432",
    "sqlite+aiosqlite:///var/acme-ra.db",
])
def test_one_host_the_query_form_and_sqlite_are_unchanged(url: str) -> None:
    assert sqlalchemy_url(url) == url


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql+asyncpg://acme@[::1]:5432,db2:5432/acme", "IPv6"),
    ("postgresql+asyncpg://acme@db1,db2/acme?target_session_attrs=rw", "target_session_attrs"),
])
def test_a_url_it_cannot_read_is_refused_at_start(url: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_RA_DATABASE_URL", url)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_the_services_get_the_dialects_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_RA_DATABASE_URL", "postgresql+asyncpg://acme@db1:5432,db2:5432/acme")
    assert Settings().effective_database_url == (
        "postgresql+asyncpg://acme@/acme?host=db1:5432&host=db2:5432&target_session_attrs=read-write")


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    primary = PostgresServer(prefix="acme-ra-test-multihost-")
    standby: PostgresServer | None = None
    try:
        primary.start()
        standby = primary.standby()
        standby.start()
        yield primary, standby
    finally:
        primary.remove()
        if standby is not None:
            standby.remove()


@pytest.mark.integration
async def test_the_primary_is_found_whichever_host_comes_first(servers: tuple[PostgresServer, PostgresServer]) -> None:
    primary, standby = servers
    assert standby.in_recovery()
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/postgres")
    try:
        async with database.autocommit() as conn:
            port = (await conn.execute(text("SELECT current_setting('port')"))).scalar_one()
            assert int(port) == primary.port
            await conn.execute(text("CREATE TABLE IF NOT EXISTS multihost_probe (n int)"))
    finally:
        await database.dispose()


@pytest.mark.integration
async def test_a_connection_refused_writes_is_dropped_and_replaced(servers: tuple[PostgresServer, PostgresServer]) -> None:
    primary, standby = servers
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres")
    try:
        async with database.sessions() as session:
            # What a demoted primary's sessions see: every write refused (SQLSTATE 25006).
            await session.execute(text("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"))
            await session.commit()
            with pytest.raises(sqlalchemy.exc.DBAPIError) as refused:
                await session.execute(text("CREATE TABLE multihost_refused (n int)"))
            assert is_read_only_refusal(refused.value)
            assert refused.value.connection_invalidated, "the read-only connection went back to the pool"
        async with database.transaction() as session:  # a new connection: writes again
            await session.execute(text("CREATE TABLE IF NOT EXISTS multihost_refused (n int)"))
    finally:
        await database.dispose()


@pytest.mark.integration
async def test_a_host_that_never_answers_costs_one_timeout_then_none(
        servers: tuple[PostgresServer, PostgresServer]) -> None:
    """A frozen server first in the list: it accepts the TCP connection (the kernel does) and
    never answers. asyncpg's own 60 s for all hosts would go on it; here it gets
    HOST_CONNECT_TIMEOUT_SECONDS, then the primary is found, and later connections go to the
    primary first."""
    primary, _standby = servers
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(16)
    port = frozen.getsockname()[1]
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{port},127.0.0.1:{primary.port}/postgres")
    try:
        async with asyncio.timeout(engine.HOST_CONNECT_TIMEOUT_SECONDS * 4):
            async with database.transaction() as session:
                assert (await session.execute(text("SELECT pg_is_in_recovery()"))).scalar_one() is False
            began = time.monotonic()
            connections = [await database.engine.connect() for _ in range(3)]  # new ones, the first still held
            for conn in connections:
                await conn.close()
        assert time.monotonic() - began < engine.HOST_CONNECT_TIMEOUT_SECONDS, "the frozen host was tried again"
    finally:
        await database.dispose()
        frozen.close()


@pytest.mark.integration
def test_acme_ra_migrate_runs_on_the_primary_through_the_host_list(
        servers: tuple[PostgresServer, PostgresServer], tmp_path: Path) -> None:
    primary, standby = servers
    subprocess.run([str(primary.bin / "createdb"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                    "multihost_migrate"], check=True, timeout=60)
    env = base_environment() | {
        f"{ENV_PREFIX}DATABASE_URL":
            f"postgresql+asyncpg://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/multihost_migrate",
        f"{ENV_PREFIX}STATE_DIR": str(tmp_path),
    }
    done = subprocess.run([sys.executable, "-m", "acme_ra_tools.cli", "migrate"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    tables = subprocess.run([str(primary.bin / "psql"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                             "-At", "-d", "multihost_migrate", "-c", "SELECT count(*) FROM orders"],
                            check=True, capture_output=True, text=True, timeout=60)
    assert tables.stdout.strip() == "0"
