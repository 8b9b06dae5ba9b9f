"""deploy/install.sh and deploy/systemd/: the VM install. The installer runs into a temporary
root (as root, for an existing user: ``nobody`` here, so no user is added to this machine) with
the wheel of this run; what it wrote is checked file by file, owner and mode, and a second run
(an upgrade) keeps the configuration and the secrets. The shipped units pass
``systemd-analyze verify`` (their commands pointed at the installed venv) without a word, and
``systemd-analyze security`` rates each "OK" or better."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from acme_ra import __version__

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "deploy" / "install.sh"
UNITS = ROOT / "deploy" / "systemd"
SERVICES = ["frontend", "validator", "signer", "admin"]
# The user the installer is pointed at: one that exists on every Debian machine.
USER = "nobody"
# install.sh makes a venv and pip installs the wheel and its dependencies.
INSTALL_TIMEOUT_SECONDS = 600
# systemd-analyze security: 0 is best, 10 worst; up to 2.0 it says "OK" (below 1: "SAFE").
MAX_EXPOSURE = 2.0

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze not installed: apt-get install -y systemd", pytrace=False)
    return found


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    if os.geteuid() != 0:
        pytest.fail("deploy/install.sh runs as root (it chowns to the service user): run the suite as root",
                    pytrace=False)
    root = tmp_path_factory.mktemp("root")
    [wheel] = dist.glob("*.whl")
    done = subprocess.run([str(INSTALLER), "--root", str(root), "--user", USER, "--python", sys.executable, str(wheel)],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-6000:]}"
    return root, done.stdout


def _owner_mode(path: Path) -> tuple[str, str, int]:
    info = path.stat()
    return pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode)


def test_the_installer_writes_venv_units_config_and_secrets_with_the_right_owners(installed: tuple[Path, str]) -> None:
    root, stdout = installed
    group = grp.getgrgid(pwd.getpwnam(USER).pw_gid).gr_name
    etc = root / "etc" / "acme-ra"
    assert _owner_mode(etc) == ("root", group, 0o750)
    for name in ("env", "secret.key", "upstream-hmac.key"):
        assert _owner_mode(etc / name) == ("root", group, 0o640), name
    assert len((etc / "secret.key").read_text().strip()) >= 32
    assert (etc / "env").read_text() == (UNITS / "acme-ra.env").read_text()
    for state in ("acme-ra", "acme-ra-nats"):
        assert _owner_mode(root / "var" / "lib" / state) == (USER, group, 0o750)
    for unit in UNITS.glob("*.service"):
        written = (root / "etc" / "systemd" / "system" / unit.name).read_text()
        assert f"\nUser={USER}\n" in written and f"\nGroup={group}\n" in written
        assert written.replace(f"User={USER}", "User=acme-ra").replace(f"Group={group}", "Group=acme-ra") \
            == unit.read_text()
    assert os.readlink(root / "usr" / "local" / "bin" / "acme-ra") == "/opt/acme-ra/bin/acme-ra"
    version = subprocess.run([str(root / "opt" / "acme-ra" / "bin" / "acme-ra"), "--version"], cwd=root,
                             capture_output=True, text=True, timeout=60, check=False)
    assert version.stdout == f"acme-ra {__version__}\n", version.stderr
    assert (root / "opt" / "acme-ra" / "bin" / "nats-server").is_file()
    assert f"installed acme-ra {__version__}" in stdout and "systemctl enable --now acme-ra-nats" in stdout


def test_an_upgrade_keeps_the_configuration_and_secrets(installed: tuple[Path, str], dist: Path) -> None:
    root, _ = installed
    etc = root / "etc" / "acme-ra"
    (etc / "env").write_text((etc / "env").read_text() + "ACME_RA_EAB_REQUIRED=false\n")
    secret = (etc / "secret.key").read_text()
    [wheel] = dist.glob("*.whl")
    done = subprocess.run([str(INSTALLER), "--root", str(root), "--user", USER, "--python", sys.executable, str(wheel)],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False)
    assert done.returncode == 0, done.stderr[-6000:]
    assert (etc / "env").read_text().endswith("ACME_RA_EAB_REQUIRED=false\n")
    assert (etc / "secret.key").read_text() == secret
    assert "(a template)" not in done.stdout


def test_the_installer_refuses_bad_arguments_in_one_line(tmp_path: Path) -> None:
    not_a_wheel = tmp_path / "acme-ra.tar.gz"
    not_a_wheel.write_text("")
    done = subprocess.run([str(INSTALLER), "--root", str(tmp_path), str(not_a_wheel)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (2, f"install.sh: {not_a_wheel} is not a wheel (make dist builds one)\n")
    fake_wheel = tmp_path / "acme_ra-0-py3-none-any.whl"
    fake_wheel.write_text("")
    done = subprocess.run([str(INSTALLER), "--root", str(tmp_path), "--user", "acme-ra-no-such-user",
                           "--python", sys.executable, str(fake_wheel)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (
        1, "install.sh: user acme-ra-no-such-user does not exist (with --root it must: create it first)\n")
    assert not (tmp_path / "opt").exists()


def test_the_units_verify_and_are_hardened(installed: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = installed
    analyze = systemd_analyze()
    # The units as shipped, their commands pointed at the venv the installer made.
    for unit in UNITS.glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/acme-ra/", f"{root}/opt/acme-ra/"))
    units = sorted(str(path) for path in tmp_path.glob("*.service"))
    assert len(units) == len(SERVICES) + 1
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    for unit in units:
        done = subprocess.run([analyze, "security", "--offline=yes", unit], capture_output=True, text=True,
                              timeout=120, check=False)
        exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        assert exposure and float(exposure[1]) <= MAX_EXPOSURE, f"{unit}\n{done.stdout[-3000:]}\n{done.stderr}"
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        for directive in ("User=acme-ra", "ProtectSystem=strict", "NoNewPrivileges=yes", "ProtectHome=yes",
                          "PrivateTmp=yes", "StateDirectory=acme-ra", "UMask=0077"):
            assert f"\n{directive}" in text, (unit.name, directive)
        capabilities = re.findall(r"^CapabilityBoundingSet=(.*)$", text, re.MULTILINE)
        # Only the frontend binds a port below 1024 (443).
        assert capabilities == (["CAP_NET_BIND_SERVICE"] if unit.name == "acme-ra-frontend.service" else [""])
    for service in SERVICES:
        assert f"ExecStart=/opt/acme-ra/bin/python -m acme_ra_{service}\n" in (
            UNITS / f"acme-ra-{service}.service").read_text()
