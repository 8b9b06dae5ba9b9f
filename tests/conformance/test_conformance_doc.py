"""docs/conformance.md stays true: every line of the conformance checklist has a row, every row
names a test or says what is left out, and every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "conformance.md"

# The checklist's lines (shared/reference/acme-conformance.md); S1-S5 are the five items of its
# section 3.18, which has no ids of its own.
CHECKLIST = {
    "T": 9, "J": 10, "N": 6, "G": 5, "D": 3, "A": 10, "E": 5, "K": 4, "O": 8, "Z": 9,
    "V": 7, "F": 9, "C": 4, "R": 6, "L": 3, "X": 5, "P": 5, "S": 5,
}
REFERENCE = re.compile(r"`((?:[a-z_]+/)+[a-z0-9_]+\.py)(?:::(\w+))?`")


def rows() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in PAGE.read_text().splitlines():
        match = re.match(r"^\| ([A-Z]\d+) ", line)
        if match:
            assert match.group(1) not in found, f"two rows for {match.group(1)}"
            found[match.group(1)] = line
    return found


def test_every_checklist_line_has_a_row_with_a_test_or_a_reason() -> None:
    found = rows()
    expected = {f"{letter}{n}" for letter, count in CHECKLIST.items() for n in range(1, count + 1)}
    assert sorted(expected - set(found)) == []
    assert sorted(set(found) - expected) == []
    for line_id, row in found.items():
        assert REFERENCE.search(row) or "**left out:**" in row, f"{line_id} names no test and no reason"


def test_every_test_named_exists() -> None:
    missing = []
    for path, function in REFERENCE.findall(PAGE.read_text()):
        source = ROOT / "tests" / path.removeprefix("tests/")
        if not source.is_file():
            missing.append(path)
        elif function and not re.search(rf"^(async )?def {function}\(", source.read_text(), re.MULTILINE):
            missing.append(f"{path}::{function}")
    assert missing == []
