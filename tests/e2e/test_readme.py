"""The README stays true: every setting is in its configuration table."""

from __future__ import annotations

from pathlib import Path

from acme_ra.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_table() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `ACME_RA_")]
    documented = {name.strip("` ") for row in rows for name in row.split("|")[1].split(",")}
    missing = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields} - documented
    assert not missing, f"README.md's configuration table lacks {sorted(missing)}"
