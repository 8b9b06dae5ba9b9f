"""uacme (Debian's package, libcurl with GnuTLS) issues, renews and revokes through the running
services with its hook script: http-01 token files for the test's web server, dns-01 TXT
records for the test DNS server.

uacme has no option or variable for the CA bundle: its libcurl reads the system trust in
/etc/ssl/certs. It runs in a mount namespace of its own (`unshare --mount`) in which a directory
holding only the lab's roots is bind-mounted over /etc/ssl/certs. Nothing outside that process
sees the change; the machine's trust store is never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.lab import TEST_ZONE, Lab

from . import clients
from .webroot import ChallengeWebServer

pytestmark = pytest.mark.integration

HOOK = clients.HOOKS / "uacme-hook"
SYSTEM_TRUST_DIR = "/etc/ssl/certs"
# In the new mount namespace: hide the system trust behind $TRUST_DIR, then become uacme.
PRIVATE_TRUST = 'mount --bind "$TRUST_DIR" ' + SYSTEM_TRUST_DIR + ' && exec "$0" "$@"'


class Uacme:
    """uacme with one --confdir (one account) for a module's tests."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.binary = clients.require("uacme")
        self.unshare = clients.require("unshare")
        self.confdir = workdir / "conf"
        trust_dir = workdir / "trust"
        trust_dir.mkdir()
        (trust_dir / "ca-certificates.crt").write_bytes(lab.ca_bundle.read_bytes())
        self.env = clients.client_environment(TRUST_DIR=str(trust_dir))

    def __call__(self, *args: str, **env: str) -> clients.Run:
        # As root a mount namespace is enough; otherwise a user namespace maps us to root in it.
        namespace = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
        command = [self.unshare, *namespace, "--propagation", "private", "sh", "-c", PRIVATE_TRUST,
                   self.binary, "--verbose", "--confdir", str(self.confdir), "--acme-url", self.lab.directory_url,
                   *args]
        result = clients.run(command, self.env | env)
        assert result.returncode == 0, f"{result.describe()}\n{self.lab.logs()}"
        return result

    def issue(self, names: list[str], **env: str) -> clients.Run:
        # --no-ocsp: lab certificates name no OCSP responder; EC keys are quicker to make
        return self("--hook", str(HOOK), "--no-ocsp", "--type", "EC", "--force", "issue", *names, **env)

    def cert_path(self, name: str) -> Path:
        return self.confdir / name.removeprefix("*.") / "cert.pem"

    def issued(self, name: str, names: set[str]) -> x509.Certificate:
        chain = clients.load_chain(self.cert_path(name))
        clients.assert_certificate(chain, clients.load_roots(self.lab.ca_bundle), names)
        return chain[0]


@pytest.fixture(scope="module")
def uacme(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Uacme:
    client = Uacme(lab, tmp_path_factory.mktemp("uacme"))
    run = client("--yes", "new")
    assert "account created at" in run.output, run.describe()
    return client


def test_http01_issue_renew_revoke_with_either_key(uacme: Uacme, webroot: ChallengeWebServer) -> None:
    lab, name = uacme.lab, f"uacme.{TEST_ZONE}"
    run = uacme.issue([name], CHALLENGE_WEBROOT=str(webroot.directory))
    assert f"begin http-01 {name}" in run.output, run.describe()
    first = uacme.issued(name, {name})

    uacme.issue([name], CHALLENGE_WEBROOT=str(webroot.directory))  # renewal: the authorization is reused
    second = uacme.issued(name, {name})
    assert second.serial_number != first.serial_number
    backups = list(uacme.cert_path(name).parent.glob("cert-*.pem"))
    assert len(backups) == 1, backups  # uacme kept the first certificate

    # The current certificate with the account key (kid), the first with its own key (jwk).
    uacme("revoke", str(uacme.cert_path(name)))
    clients.assert_revoked(lab.directory_url, lab.ca_bundle, second)
    clients.assert_not_revoked(lab.directory_url, lab.ca_bundle, first)
    uacme("revoke", str(backups[0]), str(uacme.confdir / "private" / name / "key.pem"))
    clients.assert_revoked(lab.directory_url, lab.ca_bundle, first)


def test_dns01_hook_for_a_wildcard(uacme: Uacme) -> None:
    lab, name = uacme.lab, f"uacme-dns.{TEST_ZONE}"
    run = uacme.issue([name, f"*.{name}"], TEST_DNS_TXT_DIR=str(lab.txt_dir))
    assert run.output.count("begin dns-01") == 2, run.describe()
    uacme.issued(name, {name, f"*.{name}"})
    assert not any(lab.txt_dir.iterdir()), "the hook left TXT records behind"
