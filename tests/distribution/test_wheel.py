"""The released artefact as an operator installs it: ``python -m build`` makes an sdist and a
wheel (the wheel built from the sdist, so the sdist is complete); for each supported Python a
clean venv installs the wheel with pip and, from an empty directory with no checkout on the
path, runs ``acme-ra --version`` and ``acme-ra dev`` (every service, the migrations and the
admin console's templates come from the wheel), and certbot gets a certificate from it.

Slow (a venv and its dependencies per Python): one wheel per run (the ``dist`` fixture of
tests/conftest.py), shared by the three and by tests/deploy/test_systemd.py.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from acme_ra import __version__
from tests.e2e.test_make_dev import READY_LINE, START_TIMEOUT_SECONDS, Launcher
from tests.support import certbot
from tests.support.lab import LabPorts, base_environment, lab_environment

ROOT = Path(__file__).resolve().parents[2]
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
# pip install of the wheel and its dependencies into an empty venv.
INSTALL_TIMEOUT_SECONDS = 600
PACKAGES = ("acme_ra", "acme_ra_frontend", "acme_ra_validator", "acme_ra_signer", "acme_ra_admin")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def find_python(version: str) -> str:
    """``python<version>`` from PATH, else from pyenv's versions; fails with what to install."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "-c", "import sys, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    pytest.fail(f"python{version} (with venv and ensurepip) not found on PATH or in {pyenv_root}/versions: "
                f"apt-get install -y python{version}-venv, or pyenv install {version}", pytrace=False)


def test_the_sdist_and_wheel_carry_the_code_data_and_licence(dist: Path) -> None:
    [wheel] = dist.glob(f"acme_ra-{__version__}-py3-none-any.whl")
    [sdist] = dist.glob(f"acme_ra-{__version__}.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in PACKAGES:
        assert f"{package}/__main__.py" in names or f"{package}/__init__.py" in names, package
    migrations = sorted(path.name for path in (ROOT / "libs/acme_ra/db/migrations/versions").glob("*.py"))
    assert migrations and all(f"acme_ra/db/migrations/versions/{name}" in names for name in migrations)
    templates = sorted(path.name for path in (ROOT / "services/admin/acme_ra_admin/templates").iterdir())
    assert all(f"acme_ra_admin/templates/{name}" in names for name in templates)
    assert f"acme_ra-{__version__}.dist-info/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"acme_ra-{__version__}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata and "Requires-Python: >=3.11" in metadata
    assert not any(name.startswith("tests/") for name in names)
    with tarfile.open(sdist) as archive:
        assert f"acme_ra-{__version__}/LICENSE" in archive.getnames()


@pytest.fixture(params=SUPPORTED_PYTHONS)
def installed(request: pytest.FixtureRequest, dist: Path, tmp_path: Path) -> Iterator[Path]:
    """A venv of one supported Python with the wheel installed by pip; yields its bin directory."""
    python = find_python(request.param)
    venv = tmp_path / f"venv-{request.param}"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120, capture_output=True)
    [wheel] = dist.glob("*.whl")
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False)
    assert done.returncode == 0, f"pip install on Python {request.param}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    yield venv / "bin"


def test_the_wheel_runs_every_service_and_gets_a_certificate(installed: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"  # an empty directory: the operator's, not a checkout
    site.mkdir()
    env = base_environment()
    env.pop("PYTHONPATH", None)

    version = subprocess.run([str(installed / "acme-ra"), "--version"], cwd=site, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert (version.returncode, version.stdout) == (0, f"acme-ra {__version__}\n"), version.stderr
    script = f"import {', '.join(PACKAGES)}; print('\\n'.join(m.__file__ for m in ({', '.join(PACKAGES)})))"
    where = subprocess.run([str(installed / "python"), "-c", script],
                           cwd=site, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(installed.parent)) for path in where.stdout.split()), where.stdout

    # Free ports (a make dev may be running on this machine); the state dir and the SQLite
    # database are acme-ra dev's defaults: ./var in the empty directory.
    ports = LabPorts.allocate()
    env = lab_environment(site / "unused", "unused", ports)
    del env["ACME_RA_STATE_DIR"], env["ACME_RA_DATABASE_URL"]
    env.pop("PYTHONPATH", None)
    stdout_path, stderr_path = tmp_path / "dev.stdout", tmp_path / "dev.stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen([str(installed / "acme-ra"), "dev", "--nats-port", str(ports.nats)],
                                   env=env, cwd=site, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    dev = Launcher(process, ports, site / "var", stdout_path, stderr_path)
    try:
        dev.read_until(READY_LINE, START_TIMEOUT_SECONDS)
        command = dev.printed_certbot_command()
        assert command.split()[1] == "certbot", command  # the wheel does not bring certbot: the client's own
        # certbot is a client of its own (the suite's); only the server runs from the wheel.
        client_env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        done = subprocess.run(["bash", "-c", command], env=client_env, cwd=site, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=certbot.CERTBOT_TIMEOUT_SECONDS, check=False)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}\n{dev.stderr()[-20000:]}"
        live = site / "var" / "certbot" / "config" / "live" / "myhost.localhost"
        chain = x509.load_pem_x509_certificates((live / "fullchain.pem").read_bytes())
        certbot.verify_chain(chain, site / "var" / "ca-bundle.pem", "myhost.localhost")
        assert dev.stop() == 0, dev.stderr()[-20000:]
    finally:
        dev.stop()
    assert (site / "var" / "acme-ra.db").is_file()
    for service in ("signer", "validator", "frontend", "admin"):
        log = (site / "var" / "logs" / f"{service}.log").read_text()
        assert re.search(rf'"service":"{service}"', log), service
    # Every child ran the venv's interpreter, none the checkout's.
    assert str(ROOT) not in dev.stderr()
