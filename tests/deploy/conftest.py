"""Shared by the deployment tests: the tools they need (missing ones fail with the install line,
never a skip), a PostgreSQL database for the process lab, and the figures they report."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.support.postgres import throwaway_cluster

ROOT = Path(__file__).resolve().parents[2]
APT_INSTALL = "apt-get install -y haproxy pebble postgresql"
# Figures the lab tests measured; written to build/deploy-figures.json at the end.
FIGURES: dict[str, Any] = {}


def require_binaries() -> None:
    from acme_ra_tools.lab_infrastructure import haproxy_binary

    missing = [name for name in ("pebble", "pebble-challtestsrv") if shutil.which(name) is None]
    missing += [] if haproxy_binary() else ["haproxy"]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: the process lab needs them. Install with: {APT_INSTALL}",
                    pytrace=False)


def _execute(url: str, statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards) on the lane's PostgreSQL, else on
    the run's throwaway cluster (the SQLite lane needs no database server)."""
    configured = os.environ.get("ACME_RA_TEST_DATABASE_URL")
    if configured and make_url(configured).get_backend_name() == "postgresql":
        base = make_url(configured)
    else:
        base = make_url(throwaway_cluster().url("test"))
    name = f"acme_ra_lab_{secrets.token_hex(4)}"
    admin = base.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    try:
        _execute(admin, f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as error:
        pytest.fail(f"the process lab needs PostgreSQL at {base.render_as_string(hide_password=True)} "
                    f"({error}); install and start it: {APT_INSTALL}", pytrace=False)
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        _execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_sessionfinish(session: pytest.Session) -> None:
    if FIGURES:
        path = ROOT / "build" / "deploy-figures.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(FIGURES, indent=2) + "\n")
