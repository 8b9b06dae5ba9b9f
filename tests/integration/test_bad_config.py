"""Every entry point refuses a bad configuration value with one line naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lab import base_environment

pytestmark = pytest.mark.integration

ENTRY_POINTS = {
    "frontend": ["-m", "acme_ra_frontend"],
    "validator": ["-m", "acme_ra_validator"],
    "signer": ["-m", "acme_ra_signer"],
    "signer bootstrap": ["-m", "acme_ra_signer", "bootstrap"],
    "acme-ra dev": ["-m", "acme_ra_tools.cli", "dev"],
    "acme-ra migrate": ["-m", "acme_ra_tools.cli", "migrate"],
}
BAD_VALUES = {
    "ACME_RA_LISTEN": "nonsense",
    "ACME_RA_VALIDATION_HTTP_PORT": "0",
    "ACME_RA_DATABASE_URL": "mysql://db/acme",
}
# Every entry point with a bad ACME_RA_LISTEN; the frontend with every bad value.
CASES = [(entry, "ACME_RA_LISTEN") for entry in ENTRY_POINTS] + [
    ("frontend", variable) for variable in BAD_VALUES if variable != "ACME_RA_LISTEN"
]


@pytest.mark.parametrize(("entry_point", "variable"), CASES)
def test_bad_value_stops_start_up_with_one_line(entry_point: str, variable: str, tmp_path: Path) -> None:
    env = base_environment() | {"ACME_RA_STATE_DIR": str(tmp_path / "var"), variable: BAD_VALUES[variable]}
    completed = subprocess.run([sys.executable, *ENTRY_POINTS[entry_point]], env=env, cwd=tmp_path,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert variable in lines[0]
    assert completed.stdout == ""
