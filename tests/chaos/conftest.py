"""Fixtures of the chaos tests: one PostgreSQL instance for the session (started here with
Debian's initdb/pg_ctl, whatever database the lane uses, because a test restarts it), a fresh
database per test, and a :class:`ChaosLab` per test that is always stopped. The figures of every
test are printed at the end of the run and written to build/chaos-figures.json; the services'
logs are kept in build/chaos-logs/<test>/."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.dns_server import TestDnsServer
from tests.support.postgres import PostgresServer
from tests.upstream.pebble import require_pebble

from .lab import ChaosLab, migrate, run_sql
from .load import FIGURES_FILE, Figures

FIGURES: list[Figures] = []
# Every service's log of the last run of each chaos test (what a failure needs).
LOGS_DIR = Path("build") / "chaos-logs"


# Migrated once per session; each test's database is a copy (CREATE DATABASE ... TEMPLATE).
TEMPLATE_DATABASE = "chaos_template"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(prefix="acme-ra-chaos-pg-")
    try:
        server.start()
        run_sql(server.psql_url(), f'CREATE DATABASE "{TEMPLATE_DATABASE}"')
        migrate(server.url(TEMPLATE_DATABASE), tmp_path_factory.mktemp("chaos-migrate"))
        yield server
    finally:
        server.remove()


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    name = f"chaos_{secrets.token_hex(4)}"
    run_sql(postgres.psql_url(), f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DATABASE}"')
    try:
        yield name
    finally:
        if not (postgres.data / "postmaster.pid").exists():  # a test left it stopped
            postgres.start()
        run_sql(postgres.psql_url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def chaos(request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer, database: str,
                test_dns: TestDnsServer) -> AsyncIterator[ChaosLab]:
    require_pebble()
    lab = ChaosLab(request.node.name.removeprefix("test_"), tmp_path, postgres, database, test_dns.resolver_setting)
    async with kept(request, lab):
        yield lab


@contextlib.asynccontextmanager
async def kept(request: pytest.FixtureRequest, lab: ChaosLab) -> AsyncIterator[ChaosLab]:
    """``lab`` stopped at the end whatever happens, its services' logs kept in LOGS_DIR and its
    figures printed (a fixture of a test module's own that makes its lab uses it too)."""
    try:
        yield lab
    finally:
        await lab.close()
        lab.stop()
        logs = Path(request.config.rootpath) / LOGS_DIR / lab.figures.test
        shutil.rmtree(logs, ignore_errors=True)
        shutil.copytree(lab.deployment.log_dir, logs)
        if lab.figures.orders or lab.figures.faults:
            FIGURES.append(lab.figures)
            print("\n" + lab.figures.render())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    for figures in FIGURES:
        terminalreporter.write_line(figures.render())
    path = Path(terminalreporter.config.rootpath) / FIGURES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([f.as_dict() | {"test": f.test} for f in FIGURES], indent=2, default=str) + "\n")
