"""`make bench` and `make bench-upstream` with ``--smoke``: the benchmarks' whole path with a few
certificates, and the same-run comparisons with one pair.

No timing assertions (a benchmark is not a timed test): every target ran, every certificate was
issued, no request failed; the upstream validation benchmark timed every validation, per method
(acme-ra in front of a Pebble that validates for real, the signer proving each name by dns-01
through BIND9, then by http-01 through the frontends' central responder). On the lane's database:
PostgreSQL when ACME_RA_TEST_DATABASE_URL is set, else SQLite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The whole smoke run: up to three targets started and stopped, a few certificates each (seconds).
SMOKE_TIMEOUT_SECONDS = 600
# Historical orders of the comparison's smoke run.
HISTORY_ORDERS = 2_000

pytestmark = pytest.mark.integration


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str, subprocess.CompletedProcess[str]]:
    """``python -m bench --smoke ARGS`` on the lane's database: its results, its output for
    messages, and the finished process."""
    results_path = tmp_path / "results.json"
    database = os.environ.get("ACME_RA_TEST_DATABASE_URL") or "sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--smoke", "--database-url", database,
         "--workdir", str(tmp_path / "work"), "--json", str(results_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS, check=False,
    )
    output = f"exit status {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    assert results_path.is_file(), output
    return json.loads(results_path.read_text()), output, done


def test_bench_smoke_issues_on_every_target_without_errors(tmp_path: Path) -> None:
    results, output, done = run_bench(tmp_path)
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


def test_bench_upstream_validation_smoke_times_each_method(tmp_path: Path) -> None:
    results, output, done = run_bench(tmp_path, "--upstream-validation")
    methods = {entry["method"]: entry for entry in results["upstream_validation"]}
    assert set(methods) == {"dns-01", "http-01"}, output
    for method in ("dns-01", "http-01"):
        measured = methods[method]
        assert not measured.get("error") and not measured.get("skipped"), (method, output)
        certificates = measured["certificates"]
        assert certificates >= 3 + 1, (method, output)  # --smoke: 3 measured, 1 warm-up
        # One upstream validation per certificate (one name each; warm-up included), all valid.
        assert measured["validations"]["n"] == certificates, (method, output)
        assert measured["failed_validations"] == 0, (method, output)
        assert 0 < measured["validations"]["p50"] <= measured["validations"]["p95"], (method, output)
    assert results["errors"] == 0, output
    assert done.returncode == 0, output
    assert "dns-01" in done.stdout and "http-01" in done.stdout and "p95 ms" in done.stdout, output


def test_bench_history_with_purge_compares_one_pair(tmp_path: Path) -> None:
    """--history N --purge: the history filled once, both runs issued every certificate, the purge
    ran during the second at its pace (ACME_RA_PURGE_SHARE) and deleted expired history until the
    load ended (then it is stopped), the table has both variants."""
    results, output, done = run_bench(tmp_path, "--history", str(HISTORY_ORDERS), "--purge", "--rounds", "1")
    assert results["variants"] == [f"history {HISTORY_ORDERS}", f"history {HISTORY_ORDERS} + purge"], output
    assert results["notes"]["history_fill"]["orders"] == HISTORY_ORDERS, output
    [pair] = results["rounds"]
    for run in pair:
        assert run["errors"] == 0 and [t["key"] for t in run["targets"]] == ["b"], output
        [level] = run["targets"][0]["load"]["levels"]
        assert level["completed"] == level["count"] and level["failed"] == 0, output
    purge = pair[1]["targets"][0]["purge"]
    # Most of 3 years is past 30 days: all of it goes unless the load ended first.
    assert purge["rows"]["orders"] > (0 if purge["stopped_when_load_ended"] else HISTORY_ORDERS // 2), (purge, output)
    assert "purge" not in pair[0]["targets"][0], output
    [row] = results["summary"]
    assert row["concurrency"] == 2 and len(row["ratio_certificates_per_second"]) == 1, output
    assert "A = history" in done.stdout and "purge:" in done.stdout, output
    assert done.returncode == 0, output


def test_bench_baseline_ref_runs_that_commit_from_a_worktree(tmp_path: Path) -> None:
    """--baseline-ref HEAD: one pair, A from a git worktree of HEAD (its own bench, its packages
    first on PYTHONPATH), B this checkout; the worktree is gone afterwards."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    results, output, done = run_bench(tmp_path, "--baseline-ref", "HEAD", "--rounds", "1")
    assert results["variants"] == ["baseline HEAD", "this checkout"], output
    [pair] = results["rounds"]
    assert head.startswith(pair[0]["machine"]["commit"]), output  # A ran the worktree's code
    for run in pair:
        assert run["errors"] == 0 and [t["key"] for t in run["targets"]] == ["b"], output
    assert not Path(results["notes"]["baseline"]["tree"]).exists(), output
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True,
                               check=True).stdout
    assert results["notes"]["baseline"]["tree"] not in worktrees, output
    assert done.returncode == 0, output
