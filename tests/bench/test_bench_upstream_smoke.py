"""`make bench-upstream BENCH_ARGS=--smoke`: the upstream validation benchmark's whole path with a
few certificates: acme-ra in front of a Pebble that validates for real, the signer proving each
name by dns-01 through BIND9, then by http-01 through the frontends' central responder. No timing
assertions: every certificate was issued, every upstream validation the signer reported was valid
and timed, per method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# One topology started and stopped, a few certificates (seconds).
SMOKE_TIMEOUT_SECONDS = 600

pytestmark = pytest.mark.integration


def test_bench_upstream_validation_smoke_times_each_method(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    database = os.environ.get("ACME_RA_TEST_DATABASE_URL") or "sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--upstream-validation", "--smoke", "--database-url", database,
         "--workdir", str(tmp_path / "work"), "--json", str(results_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS, check=False,
    )
    output = f"exit status {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    assert results_path.is_file(), output
    results = json.loads(results_path.read_text())
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
