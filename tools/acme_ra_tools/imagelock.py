"""requirements/image.lock: the container image's dependencies, pinned and hashed.

The pins are the versions of the tested environment (the venv ``make install`` made, where the
suite runs): the closure of acme-ra's runtime dependencies (pyproject's ``dependencies``, no
extras) for the image's Python (3.11 on Linux). The hashes are those of the files pip downloads
for those pins. deploy/Dockerfile installs the lock with ``pip install --require-hashes``, then
the wheel with ``--no-deps``.

    make image-lock                                # after a dependency changes
    python -m acme_ra_tools.imagelock --check     # exit 1 when the lock is stale
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "image.lock"
# The image's interpreter (deploy/Dockerfile's PYTHON_IMAGE) and platform.
IMAGE_PYTHON = "3.11"
HEADER = (
    "# The container image's dependencies (deploy/Dockerfile): acme-ra's runtime dependencies and\n"
    "# theirs, pinned to the tested environment's versions, with the hashes of their files.\n"
    "# Generated: python -m acme_ra_tools.imagelock --write (do not edit by hand).\n"
)
# pip download of every pin (seconds).
DOWNLOAD_TIMEOUT_SECONDS = 600


def marker_environment(extra: str = "") -> dict[str, str]:
    env: dict[str, str] = {key: str(value) for key, value in default_environment().items()}
    env.update(python_version=IMAGE_PYTHON, python_full_version=f"{IMAGE_PYTHON}.0", sys_platform="linux",
               platform_system="Linux", os_name="posix", extra=extra)
    return env


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate(marker_environment(extra)) for extra in {"", *extras})


def runtime_closure(root: str = "acme-ra") -> dict[str, str]:
    """canonical name -> installed version of every runtime dependency of ``root``, recursively."""
    pins: dict[str, str] = {}
    pending: list[tuple[str, set[str]]] = [(root, set())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        key = (canonicalize_name(name), frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        distribution = metadata.distribution(name)
        if key[0] != canonicalize_name(root):
            pins[key[0]] = distribution.version
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if _applies(requirement, extras):
                pending.append((requirement.name, set(requirement.extras)))
    return dict(sorted(pins.items()))


def _hashes(pins: dict[str, str]) -> dict[str, list[str]]:
    """sha256 of the files pip downloads for each pin (this interpreter: the image's)."""
    with tempfile.TemporaryDirectory() as directory:
        requirements = Path(directory) / "pins.txt"
        requirements.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-r", str(requirements),
                        "-d", str(Path(directory) / "files")], check=True, timeout=DOWNLOAD_TIMEOUT_SECONDS)
        found: dict[str, list[str]] = {}
        for path in sorted((Path(directory) / "files").iterdir()):
            if path.name.endswith(".whl"):
                name = parse_wheel_filename(path.name)[0]
            else:
                name = parse_sdist_filename(path.name)[0]
            found.setdefault(canonicalize_name(name), []).append(hashlib.sha256(path.read_bytes()).hexdigest())
    missing = set(pins) - set(found)
    if missing:
        raise SystemExit(f"imagelock: pip downloaded nothing for {sorted(missing)}")
    return found


def render(pins: dict[str, str], hashes: dict[str, list[str]]) -> str:
    lines = [HEADER]
    for name, version in pins.items():
        lines.append(f"{name}=={version} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in hashes[name]) + "\n")
    return "".join(lines)


def read_pins(text: str) -> dict[str, str]:
    """name -> version of a lock's requirements."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", " ")):
            name, _, version = line.split(" ", 1)[0].partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acme_ra_tools.imagelock", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write requirements/image.lock")
    action.add_argument("--check", action="store_true", help="exit 1 when its pins are not the tested ones")
    args = parser.parse_args(argv)
    pins = runtime_closure()
    if args.check:
        locked = read_pins(LOCK.read_text()) if LOCK.is_file() else {}
        if locked != pins:
            print(f"{LOCK} is stale: python -m acme_ra_tools.imagelock --write", file=sys.stderr)
            return 1
        return 0
    LOCK.parent.mkdir(exist_ok=True)
    LOCK.write_text(render(pins, _hashes(pins)))
    print(f"wrote {LOCK}: {len(pins)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
