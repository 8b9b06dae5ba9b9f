"""Issue 22's rule: no product module (libs, services, tools) over MAX_LINES lines; a module that
grows past it is split by responsibility."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def long_modules(root: Path) -> dict[str, int]:
    found = {}
    for pattern in ("libs/**/*.py", "services/**/*.py", "tools/**/*.py"):
        for path in root.glob(pattern):
            if "migrations" in path.parts:  # generated, one per revision
                continue
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                found[str(path.relative_to(root))] = lines
    return found


def test_no_product_module_passes_the_limit() -> None:
    long = long_modules(ROOT)
    assert not long, f"over {MAX_LINES} lines (split them by responsibility): {long}"


def test_a_planted_long_module_is_found(tmp_path: Path) -> None:
    module = tmp_path / "libs" / "acme_ra" / "big.py"
    module.parent.mkdir(parents=True)
    module.write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "libs" / "acme_ra" / "small.py").write_text("x = 1\n" * MAX_LINES)
    assert long_modules(tmp_path) == {"libs/acme_ra/big.py": MAX_LINES + 1}
