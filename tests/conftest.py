"""Suite-wide fixtures: the test DNS server and a running topology (what ``make dev`` starts),
plus the lane report that .ci/run reads to know which database the integration tests used."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support import database
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, Lab, running_lab

# Tests that use one of these fixtures count as having run on the lane's database.
LANE_FIXTURES = {"lab_database_url", "fresh_database_url"}
# Written at the end of every run: "backend=<sqlite|postgresql>", "passed=<n>", "failed=<n>";
# ACME_RA_TEST_LANE_REPORT names another file (.ci/run: one of its own).
LANE_REPORT = Path("build") / "test-lane"

_lane = {"passed": 0, "failed": 0}


@pytest.fixture(scope="session")
def test_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDnsServer]:
    with TestDnsServer(tmp_path_factory.mktemp("test-dns"), [TEST_ZONE]) as server:
        yield server


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
