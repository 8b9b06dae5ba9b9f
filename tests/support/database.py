"""A fresh database for each topology a test starts.

SQLite (a file in the test's directory) unless ``ACME_RA_TEST_DATABASE_URL`` names a
PostgreSQL server: then a uniquely named database is created through the server's ``postgres``
database and dropped afterwards, so runs never see each other's rows. Without the right to
create databases, the schema of the named database is reset instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL, make_url

TEST_DATABASE_ENV = "ACME_RA_TEST_DATABASE_URL"


def backend() -> str:
    """The database this run tests on: ``sqlite`` or ``postgresql``."""
    url = os.environ.get(TEST_DATABASE_ENV)
    return make_url(url).get_backend_name() if url else "sqlite"


def _execute(url: URL, *statements: str) -> None:
    """Run SQL with asyncpg in a thread of its own (never disturbs a test's event loop)."""

    async def run() -> None:
        connection = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


@contextmanager
def fresh_database(directory: Path) -> Iterator[str]:
    """Yield the ACME_RA_DATABASE_URL of an empty database; remove it afterwards."""
    configured = os.environ.get(TEST_DATABASE_ENV)
    if not configured:
        directory.mkdir(parents=True, exist_ok=True)
        yield f"sqlite+aiosqlite:///{(directory / 'acme-ra.db').resolve()}"
        return
    base = make_url(configured)
    if base.drivername != "postgresql+asyncpg":
        raise ValueError(f"{TEST_DATABASE_ENV} must be a postgresql+asyncpg:// URL, got {base.drivername}")
    name = f"{base.database or 'test'}_{secrets.token_hex(4)}"
    admin = base.set(database="postgres")
    try:
        _execute(admin, f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError:
        _execute(base, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
        yield base.render_as_string(hide_password=False)
        return
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        _execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
