"""The CA-switch walkthrough of docs/upstream.md ("Switching CA"), run as written: two Pebbles as
the old and the new CA, the whole topology, certbot. A profile's certificates come from the old
CA; the configuration moves the profile to the new one, the running signer follows the file
(a broken edit first changes nothing), the operator runs
renew-early for the old CA, and a plain ``certbot renew`` replaces every certificate with one
that chains to the new CA; the switch progress (CLI, admin API, console) follows it."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from acme_ra.config import http_base
from acme_ra_tools.dev import Topology
from acme_ra_tools.supervisor import settings_from_env
from tests.interop import clients
from tests.interop.test_certbot import Certbot
from tests.support import database
from tests.support.dns_server import TestDnsServer
from tests.support.doc_recipes import recipe, substituted
from tests.support.lab import TEST_ZONE, Lab, LabPorts, lab_environment, started_trusting

from .pebble import Pebble, make_tls_material, require_pebble

pytestmark = pytest.mark.integration

NAMES = [f"switch-{i}.{TEST_ZONE}" for i in range(3)]
SECRET = "ca-switch-tests-sealing-secret-0123456789"
# How long the restarted signer may take to be ready, and a CLI command to finish (seconds).
READY_SECONDS = 120.0
CLI_TIMEOUT_SECONDS = 120


def config_text(name: str, workdir: Path, old: Pebble, new: Pebble) -> str:
    """Recipe ``name`` of docs/upstream.md with the Pebbles' addresses and keys; each upstream
    also trusts its Pebble's TLS certificate (a public CA needs no ``ca_bundle``)."""
    for label, pebble in (("old", old), ("new", new)):
        (workdir / f"{label}-ca-hmac").write_text(pebble.eab_hmac_key)
    text = substituted(recipe("upstream.md", name), {
        "https://acme.old-ca.example/v2/OV": old.directory_url,
        "https://acme.new-ca.example/v2/OV": new.directory_url,
        "kid-old": old.eab_kid,
        "kid-new": new.eab_kid,
        "/run/secrets/old-ca-hmac": str(workdir / "old-ca-hmac"),
        "/run/secrets/new-ca-hmac": str(workdir / "new-ca-hmac"),
    })
    document = yaml.safe_load(text)
    document["upstreams"]["old-ca"]["ca_bundle"] = str(old.ca_bundle)
    document["upstreams"]["new-ca"]["ca_bundle"] = str(new.ca_bundle)
    return str(yaml.safe_dump(document))


class Switch:
    def __init__(self, lab: Lab, old: Pebble, new: Pebble, trust: Path, config: Path, workdir: Path) -> None:
        self.lab, self.old, self.new, self.trust, self.config, self.workdir = lab, old, new, trust, config, workdir

    def acme_ra(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "acme_ra_tools.cli", *args],
                              env=self.lab.topology.service_env("admin"), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS, check=False)
        assert done.returncode == 0, f"acme-ra {' '.join(args)}: {done.stderr}"
        return done

    def signer_reloads(self, signal_it: bool) -> None:
        """The walkthrough's step 4: nothing restarts; the running signer reads the new lists
        within its watch interval, or at once on SIGHUP (``systemctl reload``)."""
        signer = self.lab.topology.services["signer"]
        pid = signer.process.pid
        if signal_it:
            os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + READY_SECONDS
        while "upstreams reloaded" not in signer.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"the signer did not reload its upstreams:\n{self.lab.logs()}"
            time.sleep(0.3)
        assert signer.process.poll() is None and signer.process.pid == pid  # the same process, never restarted

    def progress(self) -> dict[str, dict[str, int]]:
        return {row["upstream"]: row for row in json.loads(self.acme_ra("certs", "switch-progress", "--json").stdout)}


@pytest.fixture
def switch(test_dns: TestDnsServer, tmp_path: Path) -> Iterator[Switch]:
    require_pebble()
    old, new = Pebble(tmp_path / "old-ca"), Pebble(tmp_path / "new-ca")
    try:
        trust, cert, key = make_tls_material(tmp_path / "frontend-tls")
        config = tmp_path / "acme-ra.yaml"
        config.write_text(config_text("ca-switch-before", tmp_path, old, new))
        ports = LabPorts.allocate()
        with database.fresh_database(tmp_path / "db") as database_url:
            env = lab_environment(tmp_path / "var", database_url, ports, dns_resolvers=test_dns.resolver_setting)
            env.update({
                "ACME_RA_UPSTREAM": "acme",
                "ACME_RA_CONFIG_FILE": str(config),
                "ACME_RA_PROFILES": "tlsserver=TLS server certificate",
                "ACME_RA_SECRET_KEY": SECRET,
                "ACME_RA_TLS_CERT_FILE": str(cert),
                "ACME_RA_TLS_KEY_FILE": str(key),
                # Clients ask renewalInfo again after a second (the walkthrough's step 1, shortened).
                "ACME_RA_ARI_RETRY_AFTER_SECONDS": "1",
            })
            with started_trusting(Topology(env, nats_port=ports.nats), trust) as topology:
                yield Switch(Lab(topology, ports, test_dns.txt_dir), old, new, trust, config, tmp_path)
    finally:
        old.stop()
        new.stop()


def issued_by(leaf: x509.Certificate, pebble: Pebble) -> bool:
    try:
        leaf.verify_directly_issued_by(pebble.intermediate())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def test_ca_switch_walkthrough(switch: Switch) -> None:
    lab = switch.lab
    certbot = Certbot(lab, switch.workdir / "certbot")
    certbot.env.update(REQUESTS_CA_BUNDLE=str(switch.trust), SSL_CERT_FILE=str(switch.trust))
    for name in NAMES:
        certbot.certonly(name, "-d", name, "--standalone", "--http-01-port", str(lab.ports.http01),
                         "--preferred-profile", "tlsserver")
    before = {name: certbot.chain(name)[0] for name in NAMES}
    assert all(issued_by(leaf, switch.old) for leaf in before.values())
    assert switch.old.issued_count() == len(NAMES) and switch.new.issued_count() == 0
    assert switch.progress()["old-ca"] == {"upstream": "old-ca", "valid": 3, "replaced": 0, "to_replace": 3,
                                           "renew_early": 0}

    # Not due: certbot asks renewalInfo (and may ask again a second later).
    run = certbot.ok("renew", "--no-random-sleep-on-renew")
    assert run.output.count("Certificate not yet due for renewal") == len(NAMES), run.describe()

    # Step 3 and 4: a broken edit changes nothing; then the profile moves to the new CA and the
    # running signer follows the file (SIGHUP here; the watch alone within 5 s otherwise).
    signer_log = switch.lab.topology.services["signer"].log_path
    switch.config.write_text("upstreams: [this is not a mapping\n")
    deadline = time.monotonic() + READY_SECONDS
    while "upstreams not reloaded, the lists in force stay" not in signer_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the signer did not report the broken file:\n{switch.lab.logs()}"
        time.sleep(0.3)
    switch.config.write_text(config_text("ca-switch-after", switch.workdir, switch.old, switch.new))
    switch.signer_reloads(signal_it=True)

    # Step 5, as the page writes it.
    for line in recipe("upstream.md", "ca-switch-commands").splitlines():
        words = shlex.split(line)
        assert words[0] == "acme-ra", line
        done = switch.acme_ra(*words[1:])
        if words[1:3] == ["certs", "renew-early"]:
            assert "for 3 certificate(s) (upstream old-ca)" in done.stdout, done.stdout
    assert switch.progress()["old-ca"]["renew_early"] == 3

    time.sleep(2)  # certbot's cached renewalInfo (Retry-After: 1 s) has expired
    run = certbot.ok("renew", "--no-random-sleep-on-renew")
    assert "Congratulations, all renewals succeeded" in run.output, run.describe()
    after = {name: certbot.chain(name)[0] for name in NAMES}
    for name in NAMES:
        assert after[name].serial_number != before[name].serial_number
        assert issued_by(after[name], switch.new), name
        assert not issued_by(after[name], switch.old), name
    assert switch.new.issued_count() == len(NAMES) and switch.old.issued_count() == len(NAMES)
    progress = switch.progress()
    assert progress["old-ca"] == {"upstream": "old-ca", "valid": 3, "replaced": 3, "to_replace": 0, "renew_early": 0}
    assert progress["new-ca"]["valid"] == 3 and progress["new-ca"]["to_replace"] == 3

    # The admin API and the console show the same.
    admin = lab.topology.service_env("admin")
    url = http_base(settings_from_env(admin).admin_listen)
    token = json.loads(switch.acme_ra("admin-token", "create", "--label", "switch", "--json").stdout)["token"]
    api = httpx.get(f"{url}/api/renewals/progress", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert api.status_code == 200 and {row["upstream"]: row for row in api.json()} == progress
    with httpx.Client(base_url=url, timeout=10, follow_redirects=False) as console:
        assert console.post("/login", data={"token": token}).status_code == 303
        page = console.get("/renewals")
        assert page.status_code == 200
        assert '<tr data-upstream="old-ca"><td>old-ca</td><td class="valid">3</td><td class="replaced">3</td>' \
            '<td class="to-replace">0</td>' in page.text
        # The console's renew-early form (its CSRF token from the page).
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        form = console.post("/renewals/renew-early", data={"csrf": csrf.group(1), "selector": "name",
                                                             "value": NAMES[0], "reason_url": ""})
        assert form.status_code == 200, form.text
        # Both valid certificates for the name: the old CA's (replaced) and its replacement.
        assert f"Renewal window moved into the past for 2 certificate(s) (name {NAMES[0]})" in form.text, form.text
        refused = console.post("/renewals/renew-early", data={"csrf": "forged", "selector": "name", "value": NAMES[0]})
        assert refused.status_code == 403
    clients.assert_certificate(certbot.chain(NAMES[0]), [switch.new.root()], {NAMES[0]})
