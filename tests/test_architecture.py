"""The import rules of docs/architecture.md, read from the code with ``ast``:

- the runtime library (``libs/``: ``acme_ra``) imports no service and no tooling;
- a service (``services/<name>/``: ``acme_ra_<name>``) imports no other service and no tooling;
- the tooling (``tools/``: ``acme_ra_tools``) may import the library and every service;
- none of them imports the tests or the benchmarks.

Every import counts: at module level, inside functions, under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Top-level names no product code may import.
NOT_PRODUCT = frozenset({"tests", "bench"})


@dataclass(frozen=True)
class Package:
    name: str  # the top-level import name
    layer: str  # "lib", "service" or "tool"
    directory: Path


def packages(root: Path) -> list[Package]:
    """The product packages of a source tree laid out as acme-ra's is."""
    found = []
    for layer, pattern in (("lib", "libs/*/__init__.py"), ("service", "services/*/*/__init__.py"),
                           ("tool", "tools/*/__init__.py")):
        for init in sorted(root.glob(pattern)):
            found.append(Package(init.parent.name, layer, init.parent))
    return found


def imported_modules(source: str, filename: str) -> set[str]:
    """The absolute module names a module imports (relative imports stay in their package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def allowed(importer: Package, imported: Package) -> bool:
    if importer.name == imported.name:
        return True
    if importer.layer == "lib":
        return imported.layer == "lib"
    if importer.layer == "service":
        return imported.layer == "lib"
    return True  # tooling composes the library and the services


def violations(root: Path) -> list[str]:
    """One line per import that breaks the rules, as ``path: importer imports module``."""
    by_name = {package.name: package for package in packages(root)}
    found = []
    for package in by_name.values():
        for path in sorted(package.directory.rglob("*.py")):
            for module in sorted(imported_modules(path.read_text(), str(path))):
                top = module.partition(".")[0]
                target = by_name.get(top)
                broken = top in NOT_PRODUCT or (target is not None and not allowed(package, target))
                if broken:
                    found.append(f"{path.relative_to(root)}: {package.layer} {package.name} imports {module}")
    return found


def test_the_tree_has_the_layers_the_rules_name() -> None:
    layers = {package.name: package.layer for package in packages(ROOT)}
    assert layers == {
        "acme_ra": "lib",
        "acme_ra_frontend": "service",
        "acme_ra_validator": "service",
        "acme_ra_signer": "service",
        "acme_ra_admin": "service",
        "acme_ra_tools": "tool",
    }


def test_the_code_keeps_the_import_rules() -> None:
    assert violations(ROOT) == []


def _write(root: Path, relative: str, text: str = "") -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _clean_tree(root: Path) -> None:
    _write(root, "libs/acme_ra/__init__.py")
    _write(root, "libs/acme_ra/config.py", "import os\n")
    for name in ("frontend", "signer"):
        _write(root, f"services/{name}/acme_ra_{name}/__init__.py")
        _write(root, f"services/{name}/acme_ra_{name}/app.py", "from acme_ra.config import os\nfrom . import app\n")
    _write(root, "tools/acme_ra_tools/__init__.py")
    _write(root, "tools/acme_ra_tools/cli.py", "import acme_ra_signer.app\nfrom acme_ra_frontend import app\n")


def test_a_clean_synthetic_tree_passes(tmp_path: Path) -> None:
    _clean_tree(tmp_path)
    assert len(packages(tmp_path)) == 4
    assert violations(tmp_path) == []


def test_planted_violations_are_found(tmp_path: Path) -> None:
    _clean_tree(tmp_path)
    # the library reaching into a service, inside a function
    _write(tmp_path, "libs/acme_ra/planted.py", "def f():\n    from acme_ra_signer.app import x\n")
    # a service importing another service, and the tooling
    _write(tmp_path, "services/frontend/acme_ra_frontend/planted.py",
           "import acme_ra_signer\nfrom acme_ra_tools.cli import main\n")
    # the library importing the tooling, under TYPE_CHECKING
    _write(tmp_path, "libs/acme_ra/typing_only.py",
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import acme_ra_tools.cli\n")
    # a service importing the tests' helpers
    _write(tmp_path, "services/signer/acme_ra_signer/planted.py", "from tests.support import lab\n")
    assert violations(tmp_path) == [
        "libs/acme_ra/planted.py: lib acme_ra imports acme_ra_signer.app",
        "libs/acme_ra/typing_only.py: lib acme_ra imports acme_ra_tools.cli",
        "services/frontend/acme_ra_frontend/planted.py: service acme_ra_frontend imports acme_ra_signer",
        "services/frontend/acme_ra_frontend/planted.py: service acme_ra_frontend imports acme_ra_tools.cli",
        "services/signer/acme_ra_signer/planted.py: service acme_ra_signer imports tests.support",
    ]


def test_a_violation_planted_in_a_copy_of_the_real_tree_is_found(tmp_path: Path) -> None:
    """The real packages, copied, plus one bad module: the check reads the real layout."""
    import shutil

    for package in packages(ROOT):
        shutil.copytree(package.directory, tmp_path / package.directory.relative_to(ROOT),
                        ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path) == []
    _write(tmp_path, "services/validator/acme_ra_validator/planted.py",
           "from acme_ra_frontend.workers import bind\n")
    assert violations(tmp_path) == [
        "services/validator/acme_ra_validator/planted.py: service acme_ra_validator imports acme_ra_frontend.workers",
    ]
