"""`make bench BENCH_ARGS=--smoke`: the benchmark's whole path with a few certificates per target.

No timing assertions (a benchmark is not a timed test): every target ran, every certificate was
issued, no request failed. On the lane's database: PostgreSQL when ACME_RA_TEST_DATABASE_URL
is set, else SQLite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The whole smoke run: three targets started and stopped, a few certificates each (seconds).
SMOKE_TIMEOUT_SECONDS = 600

pytestmark = pytest.mark.integration


def test_bench_smoke_issues_on_every_target_without_errors(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    database = os.environ.get("ACME_RA_TEST_DATABASE_URL") or "sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--database-url", database,
         "--workdir", str(tmp_path / "work"), "--json", str(results_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS, check=False,
    )
    output = f"exit status {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    assert results_path.is_file(), output
    results = json.loads(results_path.read_text())
    assert [t["key"] for t in results["targets"]] == ["a", "b", "c"], output
    for target in results["targets"]:
        assert not target.get("error"), output
        load = target["load"]
        assert load["setup_error"] is None, output
        for level in load["levels"]:
            assert level["completed"] == level["count"], output
            assert level["failed"] == 0 and level["errors"] == [] and level["warmup_errors"] == [], output
            assert level["http01_served"] >= level["count"], output  # validated for real, once each
            assert level["issuance_ms"]["n"] == level["count"], output
        assert target["new_nonce"].get("requests_per_second", 0) > 0, output
        assert all(value for value in target["rss_mb"].values()), output
    assert results["errors"] == 0, output
    assert done.returncode == 0, output
