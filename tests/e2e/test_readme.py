"""The README stays true: every setting is in its configuration table, with its default."""

from __future__ import annotations

from pathlib import Path

from acme_ra.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_defaults() -> dict[str, str]:
    """``ACME_RA_X`` -> the default cell of its row in the configuration table."""
    rows = {}
    for line in README.read_text().splitlines():
        if line.startswith("| `ACME_RA_"):
            cells = line.split("|")
            for name in cells[1].split(","):
                rows[name.strip("` ")] = cells[2]
    return rows


def shown(default: object) -> str | None:
    """How the table writes a default that is a plain value (None: nothing to compare)."""
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    if isinstance(default, (int, float)) or (isinstance(default, str) and default):
        return f"`{default}`"
    return None


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    rows = documented_defaults()
    missing = [f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields
               if f"{ENV_PREFIX}{field.upper()}" not in rows]
    assert not missing, f"README.md's configuration table lacks {missing}"
    wrong = {}
    for field, info in Settings.model_fields.items():
        expected = shown(info.default)
        if expected and expected not in rows[f"{ENV_PREFIX}{field.upper()}"]:
            wrong[f"{ENV_PREFIX}{field.upper()}"] = expected
    assert not wrong, f"README.md shows other defaults than config.py: {wrong}"
