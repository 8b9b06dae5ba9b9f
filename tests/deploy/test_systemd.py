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
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from acme_ra import __version__
from tests.support import certbot
from tests.support.lab import LabPorts, lab_environment

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "deploy" / "install.sh"
UNITS = ROOT / "deploy" / "systemd"
SERVICES = ["frontend", "validator", "signer", "admin"]
# The user the installer is pointed at: one that exists on every Debian machine.
USER = "nobody"
# install.sh makes a venv and pip installs the wheel and its dependencies.
INSTALL_TIMEOUT_SECONDS = 600
# How long the services started from the units may take to be ready (seconds).
READY_TIMEOUT_SECONDS = 90
# systemd-analyze security: 0 is best, 10 worst; up to 2.0 it says "OK" (below 1: "SAFE").
MAX_EXPOSURE = 2.0

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def service_python() -> str:
    """A Python 3.11+ that the service user can run (install.sh makes the venv with it): this
    one, unless its real path is in a directory others cannot enter (pyenv under /root), then
    the system's python3."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        real = Path(candidate).resolve()
        reachable = all(parent.stat().st_mode & 0o001 for parent in real.parents)
        if reachable and real.is_file():
            done = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
                                  capture_output=True, timeout=30, check=False)
            if done.returncode == 0:
                return candidate
    pytest.fail(f"no Python 3.11+ with venv that user {USER} can run: apt-get install -y python3-venv", pytrace=False)


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze not installed: apt-get install -y systemd", pytrace=False)
    return found


@pytest.fixture(scope="module")
def installed(dist: Path) -> Iterator[tuple[Path, str]]:
    if os.geteuid() != 0:
        pytest.fail("deploy/install.sh runs as root (it chowns to the service user): run the suite as root",
                    pytrace=False)
    # Outside pytest's 0700 temp dirs: the service user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="acme-ra-install-root-"))
    root.chmod(0o755)
    try:
        [wheel] = dist.glob("*.whl")
        argv = [str(INSTALLER), "--root", str(root), "--user", USER, "--python", service_python(), str(wheel)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-6000:]}"
        yield root, done.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
    done = subprocess.run([str(INSTALLER), "--root", str(root), "--user", USER, "--python", service_python(), str(wheel)],
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
                           "--python", service_python(), str(fake_wheel)],
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
    for written in units:
        done = subprocess.run([analyze, "security", "--offline=yes", written], capture_output=True, text=True,
                              timeout=120, check=False)
        exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        assert exposure and float(exposure[1]) <= MAX_EXPOSURE, f"{written}\n{done.stdout[-3000:]}\n{done.stderr}"
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


def _exec_start(unit: str, root: Path) -> list[str]:
    """A unit's ExecStart, its paths moved into the temporary root."""
    text = (root / "etc" / "systemd" / "system" / unit).read_text()
    [command] = re.findall(r"^ExecStart=(.*)$", text, re.MULTILINE)
    return [re.sub(r"^/(opt|var)/", f"{root}/\\1/", word) for word in command.split()]


def _as_user(argv: list[str]) -> list[str]:
    user = pwd.getpwnam(USER)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *argv]


def test_each_units_command_as_the_service_user_gets_a_certificate(installed: tuple[Path, str], tmp_path: Path) -> None:
    """The units' commands, run as the user the installer was given with the environment file it
    wrote (moved to the lab CA, SQLite in the state dir and free ports: no upstream CA here), the
    migration and bootstrap first, as the printed next steps say; certbot then gets a certificate."""
    root, _ = installed
    state = root / "var" / "lib" / "acme-ra"
    env_file = root / "etc" / "acme-ra" / "env"
    configured = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                      if line and not line.startswith("#"))
    assert configured["ACME_RA_STRICT_CONFIG"] == "true"  # kept: the overrides below must all be settings
    for name in list(configured):
        if name.startswith("ACME_RA_UPSTREAM") or name in {"ACME_RA_DATABASE_URL", "ACME_RA_CAA_IDENTITIES",
                                                           "ACME_RA_POLICY_ALLOW", "ACME_RA_EAB_REQUIRED"}:
            del configured[name]
    ports = LabPorts.allocate()
    env = configured | lab_environment(state, f"sqlite+aiosqlite:///{state}/acme-ra.db", ports) | {
        "ACME_RA_NATS_URL": f"nats://127.0.0.1:{ports.nats}",
        "ACME_RA_SECRET_KEY_FILE": str(root / "etc" / "acme-ra" / "secret.key"),
        "ACME_RA_VALIDATION_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
        "ACME_RA_UPSTREAM": "lab",
    }
    children: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> None:
        with (tmp_path / f"{name}.log").open("wb") as log:
            children.append(subprocess.Popen(_as_user(argv), env=env, cwd=state, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT))

    def logs() -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(tmp_path.glob("*.log")))

    try:
        nats = _exec_start("acme-ra-nats.service", root)
        start("nats", [word.replace("4222", str(ports.nats)) for word in nats])
        venv_bin = root / "opt" / "acme-ra" / "bin"
        for step in (["acme-ra", "db", "migrate"], ["python", "-m", "acme_ra_signer", "bootstrap"]):
            done = subprocess.run(_as_user([str(venv_bin / step[0]), *step[1:]]), env=env, cwd=state,
                                  capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, f"{step}: {done.stdout}{done.stderr}"
        for service in SERVICES:
            start(service, _exec_start(f"acme-ra-{service}.service", root))
        ca_bundle = state / "ca-bundle.pem"
        checks = [f"http://127.0.0.1:{ports.validator}/readyz", f"http://127.0.0.1:{ports.signer}/readyz",
                  f"https://localhost:{ports.frontend}/acme/acme/directory"]
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        with httpx.Client(verify=ssl.create_default_context(cafile=ca_bundle), timeout=2) as client:
            for url in checks:
                while True:
                    assert all(child.poll() is None for child in children), logs()
                    try:
                        if client.get(url).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, f"{url} not ready\n{logs()}"
                    time.sleep(0.3)
        work = tmp_path / "certbot"
        command = [str(Path(sys.executable).parent / "certbot"), "certonly", "--standalone", "--non-interactive",
                   "-d", "myhost.localhost", "--server", checks[2], "--http-01-port", str(ports.http01),
                   "--agree-tos", "--register-unsafely-without-email", "--config-dir", str(work / "config"),
                   "--work-dir", str(work / "work"), "--logs-dir", str(work / "logs")]
        done = subprocess.run(command, env=dict(os.environ, REQUESTS_CA_BUNDLE=str(ca_bundle)), capture_output=True,
                              text=True, timeout=certbot.CERTBOT_TIMEOUT_SECONDS, check=False)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs()}"
        chain = x509.load_pem_x509_certificates(
            (work / "config" / "live" / "myhost.localhost" / "fullchain.pem").read_bytes())
        certbot.verify_chain(chain, ca_bundle, "myhost.localhost")
        # Everything the services wrote belongs to the service user.
        owners = {pwd.getpwuid(path.stat().st_uid).pw_name for path in state.rglob("*")}
        assert owners == {USER}, owners
        assert "unknown variable" not in logs()
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
