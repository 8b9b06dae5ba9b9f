"""ARI clients follow ``acme-ra certs renew-early``: ``certbot renew`` (certbot >= 4.1, without
--force) and ``acme.sh --renew`` leave a fresh certificate alone, and renew it once an operator
moved its renewal window (RFC 9773) into the past. acme.sh's new order carries ``replaces``;
certbot (5.8) sends none, and acme-ra counts its old certificate replaced by its names."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select

from acme_ra.config import http_base
from acme_ra.db.engine import Database
from acme_ra.db.models import Certificate, Order
from acme_ra_tools.supervisor import settings_from_env
from tests.support.lab import TEST_ZONE, Lab

from . import clients
from .test_acme_sh import ADDRESS, acme_sh
from .test_certbot import ARI_SECTION, Certbot, assert_issued

pytestmark = pytest.mark.integration

CLI_TIMEOUT_SECONDS = 120
# acme.sh's exit status for "not due, skipped".
RENEW_SKIP = 2


@pytest.fixture(scope="module")
def certbot_early(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Certbot:
    return Certbot(lab, tmp_path_factory.mktemp("certbot-early"))


def acme_ra(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's ``acme-ra`` on the lab's database."""
    return subprocess.run([sys.executable, "-m", "acme_ra_tools.cli", *args], env=lab.topology.service_env("admin"),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS,
                          check=False)


async def order_of(database_url: str, serial: int) -> Order:
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            cert = (await session.execute(select(Certificate).where(Certificate.serial == format(serial, "x"))))
            order = await session.get(Order, cert.scalar_one().order_id)
            assert order is not None
            return order
    finally:
        await db.dispose()


def colon_hex(leaf: x509.Certificate) -> str:
    """The serial as openssl prints it: upper case, colon-separated bytes."""
    raw = leaf.serial_number.to_bytes((leaf.serial_number.bit_length() + 7) // 8, "big")
    return ":".join(f"{byte:02X}" for byte in raw)


def test_certbot_renews_after_renew_early_and_not_before(certbot_early: Certbot, lab_database_url: str) -> None:
    certbot = certbot_early
    assert tuple(int(part) for part in version("certbot").split(".")[:2]) >= (4, 1)
    lab, name = certbot.lab, f"early.{TEST_ZONE}"
    certbot.certonly(name, "-d", name, "--standalone", "--http-01-port", str(lab.ports.http01))
    first = assert_issued(certbot, name, {name})

    # Fresh: certbot asks ARI and leaves it alone.
    run = certbot.renew(name)
    assert "not yet due for renewal" in run.output, run.describe()
    assert certbot.chain(name)[0].serial_number == first.serial_number

    done = acme_ra(lab, "certs", "renew-early", "--name", name.upper(), "--json")
    assert done.returncode == 0, done.stderr
    moved = json.loads(done.stdout)
    assert moved["certificates"] == 1 and moved["serials"] == [format(first.serial_number, "x")]
    assert moved["selected_by"] == "name"

    # Once certbot's ARI retry time has passed (the lab answers Retry-After: 6 h), it renews.
    conf = certbot.renewal_conf(name)
    conf.write_text(ARI_SECTION.sub("", conf.read_text()))
    run = certbot.renew(name)
    assert "all renewals succeeded" in run.output, run.describe()
    assert "Certificate is due for renewal, auto-renewing" in certbot.debug_log()
    second = assert_issued(certbot, name, {name})
    assert second.serial_number != first.serial_number

    # certbot sends no "replaces"; the certificate counts as replaced (same names) all the same.
    progress = acme_ra(lab, "certs", "switch-progress", "--json")
    assert progress.returncode == 0, progress.stderr
    (lab_row,) = [row for row in json.loads(progress.stdout) if row["upstream"] == "lab"]
    assert lab_row["replaced"] >= 1

    # Nothing valid matches: a clear refusal, exit status 3.
    missing = acme_ra(lab, "certs", "renew-early", "--serial", "00:ff:ee:dd:cc:bb:aa")
    assert missing.returncode == 3, missing.stderr
    assert "no valid (unexpired, unrevoked) certificate with serial 'ffeeddccbbaa'" in missing.stderr
    usage = acme_ra(lab, "certs", "renew-early", "--serial", "ab", "--name", name)
    assert usage.returncode == 2 and "exactly one of" in usage.stderr, usage.stderr


def test_acme_sh_renews_after_renew_early_with_replaces(lab: Lab, lab_database_url: str, tmp_path: Path) -> None:
    clients.require("socat")
    home = tmp_path / "acme.sh"
    home.mkdir()
    script = home / "acme.sh"
    shutil.copy(acme_sh(), script)  # acme.sh edits its own directory on some paths: a copy
    env = clients.client_environment(HOME=str(tmp_path), LE_WORKING_DIR=str(home))
    common = ["sh", str(script), "--home", str(home), "--config-home", str(home), "--cert-home", str(home / "certs"),
              "--server", lab.directory_url, "--ca-bundle", str(lab.ca_bundle), "--no-color", "-d", ADDRESS]

    def acme_sh_run(*args: str) -> clients.Run:
        run = clients.run([*common, *args], env, cwd=home)
        assert run.returncode in (0, RENEW_SKIP), f"{run.describe()}\n{lab.logs()}"
        return run

    def leaf() -> x509.Certificate:
        folder = next((home / "certs").glob(f"{ADDRESS}*"))
        return clients.load_chain(folder / "fullchain.cer")[0]

    acme_sh_run("--issue", "--standalone", "--httpport", str(lab.ports.http01))
    first = leaf()
    run = acme_sh_run("--renew")
    assert run.returncode == RENEW_SKIP and "Skipping" in run.output, run.describe()
    assert "ARI suggestedWindow starts at" in run.output, run.describe()

    # Through the admin API this time (--url, --token), as an operator away from the database.
    env = lab.topology.service_env("admin")
    created = acme_ra(lab, "admin-token", "create", "--label", "renew-early", "--json")
    token = json.loads(created.stdout)["token"]
    api = ["--url", http_base(settings_from_env(env).admin_listen), "--token", token]
    done = acme_ra(lab, "certs", "renew-early", "--serial", format(first.serial_number, "x").upper(), *api)
    assert done.returncode == 0, done.stderr
    assert "for 1 certificate(s) (serial " in done.stdout, done.stdout

    run = acme_sh_run("--renew")
    assert run.returncode == 0 and "ARI suggestedWindow has started" in run.output, run.describe()
    second = leaf()
    assert second.serial_number != first.serial_number
    order = asyncio.run(order_of(lab_database_url, second.serial_number))
    assert order.replaces == clients.ari_cert_id(first)
