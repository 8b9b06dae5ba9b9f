"""`make bench BENCH_ARGS='--targets m --perspectives N'`: target (m), acme-ra whose validator asks
N remote perspectives, in its smoke version. No timing assertion: every certificate issued, each
challenge fetched by the primary and by every perspective, the perspectives' CPU counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE_TIMEOUT_SECONDS = 600

pytestmark = pytest.mark.integration


def test_bench_target_with_two_perspectives(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    database = os.environ.get("ACME_RA_TEST_DATABASE_URL") or "sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--targets", "m", "--perspectives", "2", "--nonce-seconds", "0",
         "--database-url", database, "--workdir", str(tmp_path / "work"), "--json", str(results_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS, check=False,
    )
    output = f"exit status {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    assert results_path.is_file(), output
    results = json.loads(results_path.read_text())
    [target] = results["targets"]
    assert target["key"] == "m" and "2 remote perspectives" in target["label"] and not target.get("error"), output
    for level in target["load"]["levels"]:
        assert level["completed"] == level["count"] and level["failed"] == 0, output
        # The primary and both perspectives fetched every challenge.
        assert level["http01_served"] >= 3 * level["count"], output
        cpu = level["cpu_ms_per_certificate"]
        assert cpu.get("perspective-1") is not None and cpu.get("perspective-2") is not None, output
    assert set(target["rss_mb"]) >= {"validator", "perspective-1", "perspective-2"}, output
    assert done.returncode == 0, output
