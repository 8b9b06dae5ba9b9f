"""docs/install.md, "Install it for real", run as written: its shell blocks, in order, in one
bash as root, into a temporary root, ending with a certificate through certbot.

What differs from a VM, each swapped in by ``doc_recipes.substituted`` (which fails when the page
no longer says what is swapped, so the test follows the page): paths live under the temporary
root and the service user is ``nobody`` (``install.sh --root``, which adds no user to this
machine); the operator's PostgreSQL, upstream CA, host name and ports become the lane's
database, the lab CA, ``localhost`` and free ports; clients trust the lab CA; and, no systemd
running here, ``systemctl`` is a stand-in that starts each unit's ``ExecStart`` as its ``User=``
and ``Group=`` with its ``EnvironmentFile=`` and ``WorkingDirectory=``, as systemd would.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from cryptography import x509

from acme_ra import __version__
from acme_ra.config import ENV_PREFIX
from tests.admin.test_docs import blocks
from tests.support import certbot, database
from tests.support.doc_recipes import substituted
from tests.support.lab import LabPorts, base_environment, lab_environment

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "install.md"
SECTION = "## Install it for real"
USER = "nobody"
# The install (a venv and its dependencies), the services' start and certbot (seconds).
RUN_TIMEOUT_SECONDS = 900
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How long the services get to stop on SIGTERM (seconds).
STOP_TIMEOUT_SECONDS = 20

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# systemd's part, for the page's `systemctl daemon-reload` and `systemctl enable --now UNIT...`.
SYSTEMCTL = textwrap.dedent('''\
    #!{python}
    """systemctl stand-in: starts each unit's ExecStart as systemd would (the test's root)."""
    import grp, os, pwd, re, subprocess, sys
    root, logs = os.environ["INSTALL_TEST_ROOT"], os.environ["INSTALL_TEST_LOGS"]
    args = sys.argv[1:]
    if args == ["daemon-reload"]:
        sys.exit(0)
    assert args[:2] == ["enable", "--now"], args
    for unit in args[2:]:
        text = open(f"{{root}}/etc/systemd/system/{{unit}}.service").read()
        get = lambda key, default=None: (re.findall(rf"^{{key}}=(.*)$", text, re.MULTILINE) or [default])[0]
        moved = lambda path: re.sub(r"^/(etc|opt|var)/", f"{{root}}/\\\\1/", path)
        env = {{"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}}
        environment_file = get("EnvironmentFile")
        for line in open(moved(environment_file)).read().splitlines() if environment_file else []:
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
        argv = [moved(word) for word in get("ExecStart").split()]
        argv = [os.environ["INSTALL_TEST_NATS_PORT"] if word == "4222" else word for word in argv]
        user, group = pwd.getpwnam(get("User")), grp.getgrnam(get("Group"))
        with open(f"{{logs}}/{{unit}}.log", "wb") as log:
            child = subprocess.Popen(["setpriv", f"--reuid={{user.pw_uid}}", f"--regid={{group.gr_gid}}",
                                      "--clear-groups", *argv], env=env, cwd=moved(get("WorkingDirectory", "/")),
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        with open(f"{{logs}}/pids", "a") as pids:
            pids.write(f"{{child.pid}}\\n")
    ''')


def section_script() -> str:
    """The sh blocks of the page's install section, in order (the page marks them not-run for
    tests/admin/test_docs.py, which runs the rest of the page against a running acme-ra)."""
    lines = PAGE.read_text().splitlines()
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    found = [block.code for block in blocks(PAGE) if block.language == "sh" and start < block.line <= end]
    assert len(found) == 5, f"{len(found)} sh blocks in {SECTION!r}: the test runs steps 1 to 5"
    return "\n".join(found) + "\n"


@pytest.fixture
def install_root() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("the install runs as root (it chowns to the service user): run the suite as root", pytrace=False)
    # Outside pytest's 0700 temp dirs: the service user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="acme-ra-install-doc-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_install_section_runs_and_gets_a_certificate(dist: Path, install_root: Path, tmp_path: Path) -> None:
    root = install_root
    [wheel] = dist.glob("*.whl")
    state = root / "var" / "lib" / "acme-ra"
    ports = LabPorts.allocate()
    cleanup = ExitStack()
    if database.backend() == "postgresql":
        database_url = cleanup.enter_context(database.fresh_database(tmp_path / "db"))
    else:
        database_url = "sqlite+aiosqlite:////var/lib/acme-ra/acme-ra.db"  # moved into the root below
    lab = lab_environment(state, database_url, ports)
    written = {"ACME_RA_STATE_DIR", "ACME_RA_DATABASE_URL", "ACME_RA_LISTEN", "ACME_RA_EXTERNAL_URL"}
    extra = {k: v for k, v in lab.items() if k.startswith(ENV_PREFIX) and k not in written}
    extra[ENV_PREFIX + "VALIDATION_ALLOW_NETWORKS"] = "127.0.0.0/8,::1/128"
    directory = f"https://localhost:{ports.frontend}"
    signer_port = extra[ENV_PREFIX + "SIGNER_LISTEN"].rsplit(":", 1)[1]
    work = tmp_path / "certbot"
    bundle = "/var/lib/acme-ra/ca-bundle.pem"  # moved into the root below, as every path of the page

    script = section_script()
    script = substituted(script, {
        # Step 1: this run's wheel, into the temporary root, for the existing user nobody.
        "make dist\n": "true  # make dist: the wheel of this run\n",
        "sudo deploy/install.sh dist/acme_ra-0.1.0-py3-none-any.whl":
            f'deploy/install.sh --root "$INSTALL_TEST_ROOT" --user {USER} {wheel}',
        # The link install.sh made names /opt/acme-ra (the real one): the test runs its target.
        "/usr/local/bin/acme-ra --version": "/opt/acme-ra/bin/acme-ra --version >&2",
        "sudo ": "",
        "runuser -u acme-ra": f"runuser -u {USER}",
        # Step 2: the lane's database, the lab CA, localhost and free ports.
        "ACME_RA_DATABASE_URL=postgresql+asyncpg://acme_ra:PASSWORD@db.example.edu/acme_ra":
            f"ACME_RA_DATABASE_URL={database_url}",
        "ACME_RA_NATS_URL=nats://127.0.0.1:4222": f"ACME_RA_NATS_URL=nats://127.0.0.1:{ports.nats}",
        "ACME_RA_LISTEN=0.0.0.0:443": f"ACME_RA_LISTEN=127.0.0.1:{ports.frontend}",
        "ACME_RA_UPSTREAM=acme\n": "ACME_RA_UPSTREAM=lab\n",
        "ACME_RA_UPSTREAM_DIRECTORY_URL=https://acme.sectigo.com/v2/InCommonRSAOV\n": "",
        "ACME_RA_UPSTREAM_EAB_KID=your-kid-from-sectigo\n": "",
        "ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE=/etc/acme-ra/upstream-hmac.key\n": "",
        "ACME_RA_CAA_IDENTITIES=sectigo.com,incommon.org\n": "",
        # No validating unbound here (tests/validator/test_dnssec.py runs one): the page's own
        # "leave both lines out" path, the lab's names resolved by the system.
        "ACME_RA_DNS_RESOLVERS=127.0.0.1:5353\nACME_RA_DNSSEC=validate\n": "",
        "ACME_RA_POLICY_ALLOW=.example.edu\n":
            "ACME_RA_POLICY_ALLOW=.localhost\n" + "".join(f"{k}={v}\n" for k, v in sorted(extra.items())),
        "https://acme.example.edu": directory,
        "http://127.0.0.1:9125/readyz": f"http://127.0.0.1:{signer_port}/readyz",
        # Step 5: a name the lab's validator finds on this machine; certbot's files in the test's.
        "--allow .example.edu": "--allow .localhost",
        "-d www.example.edu": "-d www.localhost",
        "certbot certonly": f"env REQUESTS_CA_BUNDLE={bundle} {Path(sys.executable).parent}/certbot certonly --http-01-port {ports.http01} "
                            f"--config-dir {work}/config --work-dir {work}/work --logs-dir {work}/logs",
        # The lab CA in place of a public one.
        "curl -fsS": f"curl --cacert {bundle} -fsS",
    })
    for path in ("/etc/acme-ra", "/var/lib/acme-ra", "/opt/acme-ra"):
        script = script.replace(path, f"{root}{path}")

    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    (stand_in / "systemctl").write_text(SYSTEMCTL.format(python=sys.executable))
    (stand_in / "systemctl").chmod(0o755)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = base_environment() | {
        # The system's: install.sh picks a Python the service user can run, as on a VM.
        "PATH": f"{stand_in}:{SYSTEM_PATH}",
        "INSTALL_TEST_ROOT": str(root), "INSTALL_TEST_LOGS": str(logs), "INSTALL_TEST_NATS_PORT": str(ports.nats),
    }
    (tmp_path / "install.sh").write_text("set -euo pipefail\nset -x\n" + script)
    checkout = tmp_path / "checkout"  # where the operator runs the page: a checkout with deploy/
    checkout.mkdir()
    (checkout / "deploy").symlink_to(ROOT / "deploy")

    def service_logs() -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(logs.glob("*.log")))

    try:
        done = subprocess.run(["bash", str(tmp_path / "install.sh")], cwd=checkout, env=env, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_SECONDS, check=False)
        assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-10000:]}\n{service_logs()}"
        assert f"acme-ra {__version__}" in done.stderr
        assert os.readlink(root / "usr" / "local" / "bin" / "acme-ra") == "/opt/acme-ra/bin/acme-ra"
        chain = x509.load_pem_x509_certificates((work / "config" / "live" / "www.localhost" / "fullchain.pem")
                                                .read_bytes())
        certbot.verify_chain(chain, state / "ca-bundle.pem", "www.localhost")
        # The token and the key the page made, where it said.
        assert (checkout / "admin-token.txt").read_text().strip() and (checkout / "web-eab.json").is_file()
        # The services wrote as the service user only; the secrets kept their owner and mode.
        owners = {pwd.getpwuid(path.stat().st_uid).pw_name for path in state.rglob("*")}
        assert owners == {USER}, owners
        hmac = root / "etc" / "acme-ra" / "upstream-hmac.key"
        assert hmac.stat().st_mode & 0o777 == 0o640 and hmac.stat().st_uid == 0
        assert "unknown variable" not in service_logs()
    finally:
        pids = logs / "pids"
        stop([int(line) for line in (pids.read_text().split() if pids.is_file() else [])])
        cleanup.close()


def stop(pids: list[int]) -> None:
    """TERM the services the stand-in started (each leads its own session), KILL what is left
    after STOP_TIMEOUT_SECONDS."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
