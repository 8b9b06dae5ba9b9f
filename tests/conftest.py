"""Suite-wide fixtures: the test DNS server and a running topology (what ``make dev`` starts),
plus the lane report that .ci/run reads to know which database the integration tests used.

When ``ACME_RA_TEST_DATABASE_URL`` names a PostgreSQL server that nothing answers on, the run
starts a throwaway cluster of its own (``tests.support.postgres``) and points the variable at it,
for this process and every process it starts; the report header says so."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support import database, postgres
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, Lab, running_lab

# Fixtures shared across test packages.
pytest_plugins = ["tests.support.history"]

ROOT = Path(__file__).resolve().parents[1]
# python -m build: an isolated build environment, then the sdist and the wheel from it (seconds).
BUILD_TIMEOUT_SECONDS = 300
# Tests that use one of these fixtures count as having run on the lane's database.
LANE_FIXTURES = {"lab_database_url", "fresh_database_url", "history_url"}
# What a fixture or a test module calls to reach the lane's database (besides LANE_FIXTURES).
DATABASE_HELPERS = ("fresh_database", "running_lab", "running_tls_lab", "persist_lab", "ACME_RA_TEST_DATABASE_URL",
                    "TEST_DATABASE_ENV")
# Set (to 1) by .ci/run's PostgreSQL lane: only the tests that reach the lane's database run;
# the others ran in the SQLite lane already and would only repeat themselves.
DATABASE_ONLY_ENV = "ACME_RA_TEST_DATABASE_ONLY"
# Written at the end of every run: "backend=<sqlite|postgresql>", "passed=<n>", "failed=<n>";
# ACME_RA_TEST_LANE_REPORT names another file (.ci/run: one of its own).
LANE_REPORT = Path("build") / "test-lane"

_lane = {"passed": 0, "failed": 0}
# What pytest_configure did about the lane's PostgreSQL (shown in the report header).
_database_note: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    configured = os.environ.get(database.TEST_DATABASE_ENV)
    if not configured or database.backend() != "postgresql" or postgres.reachable(configured):
        return
    server = postgres.throwaway_cluster()
    url = server.url(make_url(configured).database or "test")
    os.environ[database.TEST_DATABASE_ENV] = url
    _database_note.append(f"{database.TEST_DATABASE_ENV}: nothing answers at {mask(configured)}; "
                          f"using a throwaway PostgreSQL at {url} ({server.bin})")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    server = postgres.running_throwaway_cluster()
    if server is not None:
        terminalreporter.write_line(f"throwaway PostgreSQL at {server.url('')} was used ({server.bin})")


def pytest_unconfigure(config: pytest.Config) -> None:
    postgres.remove_throwaway_cluster()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _database_note


def mask(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@pytest.fixture(scope="session")
def test_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDnsServer]:
    with TestDnsServer(tmp_path_factory.mktemp("test-dns"), [TEST_ZONE]) as server:
        yield server


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel of this checkout (``python -m build``), built once per run."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS, check=False)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return out


@pytest.fixture(scope="session")
def lab_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared lab's database: SQLite, or PostgreSQL when ACME_RA_TEST_DATABASE_URL is set."""
    with database.fresh_database(tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def fresh_database_url(tmp_path: Path) -> Iterator[str]:
    """An empty database of the lane's kind for one test (dropped afterwards)."""
    with database.fresh_database(tmp_path / "db") as url:
        yield url


@pytest.fixture(scope="session")
def lab(test_dns: TestDnsServer, lab_database_url: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """nats-server, migrations, bootstrap and the three services, started by the launcher's code."""
    with running_lab(tmp_path_factory.mktemp("lab") / "var", lab_database_url, test_dns.resolver_setting,
                     test_dns.txt_dir) as lab:
        yield lab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(DATABASE_ONLY_ENV, "") not in ("1", "true"):
        return
    kept = [item for item in items if reaches_lane_database(item)]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


def reaches_lane_database(item: pytest.Item) -> bool:
    """Whether a test may use the lane's database: it (or a fixture it needs, at any depth) asks
    for one of LANE_FIXTURES, its module calls a DATABASE_HELPERS function, or one of its
    fixtures does. Errs on the side of running a test."""
    names = set(getattr(item, "fixturenames", ()))
    if LANE_FIXTURES & names or _mentions_helpers(getattr(item, "module", None)):
        return True
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(_mentions_helpers(definition.func) for name in names for definition in definitions.get(name, ()))


_mentions: dict[object, bool] = {}


def _mentions_helpers(code: object) -> bool:
    if code is None:
        return False
    if code not in _mentions:
        try:
            source = inspect.getsource(code)  # type: ignore[arg-type]
        except (OSError, TypeError):
            source = ""
        _mentions[code] = any(helper in source for helper in DATABASE_HELPERS)
    return _mentions[code]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if LANE_FIXTURES.intersection(getattr(item, "fixturenames", ())) and (report.when == "call" or report.failed):
        if report.failed:
            _lane["failed"] += 1
        elif report.passed:
            _lane["passed"] += 1
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.rootpath / os.environ.get("ACME_RA_TEST_LANE_REPORT", LANE_REPORT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"backend={database.backend()}\npassed={_lane['passed']}\nfailed={_lane['failed']}\n")
