"""requirements/image.lock and the image's build stage, without a Docker engine: the lock pins
exactly the runtime dependencies of pyproject (and theirs) at the tested versions, each with a
hash, within pyproject's bounds; and the build stage's commands, run here on the files its COPY
lines name, build the wheel and install it with ``pip install --require-hashes`` from a
wheelhouse with no index at all (offline), then ``pip check`` and ``acme-ra --version``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from acme_ra import __version__
from acme_ra_tools import imagelock

from .conftest import ROOT
from .test_image import instructions

LOCK = ROOT / "requirements" / "image.lock"
# pip download, wheel and two installs of ~60 packages (seconds).
PIP_TIMEOUT_SECONDS = 600

pytestmark = pytest.mark.slow


def test_the_lock_is_the_tested_closure_of_pyproject() -> None:
    text = LOCK.read_text()
    pins = imagelock.read_pins(text)
    assert pins == imagelock.runtime_closure(), "stale: python -m acme_ra_tools.imagelock --write"
    # Every entry pinned with ==, and hashed.
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split(imagelock.HEADER, 1)[1].strip())
    assert len(entries) == len(pins)
    for entry in entries:
        assert re.match(r"^[\w.-]+==[\w.+-]+ \\$", entry.splitlines()[0]), entry
        assert re.findall(r"--hash=sha256:[0-9a-f]{64}", entry), entry
    # pyproject's dependencies are in it, at versions their bounds allow.
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for text_requirement in dependencies:
        requirement = Requirement(text_requirement)
        name = canonicalize_name(requirement.name)
        assert name in pins, name
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def _copied_sources(destination: Path) -> None:
    """The files the build stage (WORKDIR /src) COPYs from the context."""
    steps = instructions()
    runtime = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    for keyword, rest in steps[:runtime]:
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, target = rest.split()
            relative = target.removeprefix("/src/")
            assert not relative.startswith("/"), f"the build stage copies outside /src: {rest}"
            for source in sources:
                path = ROOT / source
                where = destination / relative
                if relative in ("./", ".") or relative.endswith("/"):
                    where = where / path.name
                if path.is_dir():
                    shutil.copytree(path, where, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    where.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, where)


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_build_stage_installs_the_wheel_from_the_lock_offline(tmp_path: Path) -> None:
    build_steps = [rest for keyword, rest in instructions() if keyword == "RUN"]
    assert any("--require-hashes" in step and "requirements/image.lock" in step for step in build_steps)
    assert any("--no-deps /dist/acme_ra-" in step for step in build_steps)
    context = tmp_path / "src"
    context.mkdir()
    _copied_sources(context)
    assert (context / "requirements" / "image.lock").read_text() == LOCK.read_text()
    python = sys.executable
    pip = [python, "-m", "pip"]
    # RUN pip wheel --no-deps --wheel-dir /dist .
    _run([*pip, "wheel", "--quiet", "--no-cache-dir", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), "."],
         context)
    [wheel] = (tmp_path / "dist").glob(f"acme_ra-{__version__}-*.whl")
    # The lock's files, fetched once (the index this machine uses): then no index at all.
    house = tmp_path / "wheelhouse"
    _run([*pip, "download", "--quiet", "--require-hashes", "--only-binary=:all:", "--no-deps", "-r",
          "requirements/image.lock", "-d", str(house)], context)
    venv = tmp_path / "venv"
    _run([python, "-m", "venv", str(venv)], context)
    venv_pip = [str(venv / "bin" / "python"), "-m", "pip"]
    _run([*venv_pip, "install", "--quiet", "--no-cache-dir", "--no-index", "--find-links", str(house),
          "--require-hashes", "--only-binary=:all:", "-r", "requirements/image.lock"], context)
    _run([*venv_pip, "install", "--quiet", "--no-cache-dir", "--no-index", "--no-deps", str(wheel)], context)
    _run([*venv_pip, "check"], context)
    assert _run([str(venv / "bin" / "acme-ra"), "--version"], tmp_path) == f"acme-ra {__version__}\n"
    modules = "acme_ra_frontend.app, acme_ra_validator.app, acme_ra_signer.app, acme_ra_admin.app"
    _run([str(venv / "bin" / "python"), "-c", f"import {modules}"], tmp_path)
    # A file not in the lock's hashes is refused.
    tampered = tmp_path / "tampered.lock"
    tampered.write_text(re.sub(r"(--hash=sha256:)[0-9a-f]{64}", r"\g<1>" + "0" * 64, LOCK.read_text(), count=1))
    done = subprocess.run([*venv_pip, "install", "--no-index", "--find-links", str(house), "--require-hashes",
                           "--force-reinstall", "--no-deps", "-r", str(tampered)],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False)
    assert done.returncode != 0 and "hash" in done.stderr.lower(), done.stderr[-2000:]
