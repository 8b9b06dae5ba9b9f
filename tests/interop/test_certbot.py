"""certbot (PyPI, this virtualenv) renews and revokes through the running services; its renew
command asks ARI (RFC 9773) whether a certificate is due. First issuance alone is in
tests/integration/test_certbot.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.certbot import AUTH_HOOK, CLEANUP_HOOK
from tests.support.lab import TEST_ZONE, Lab

from . import clients

pytestmark = pytest.mark.integration

# A renewal configuration's ARI section: certbot asks again only after its retry time.
ARI_SECTION = re.compile(r"^\[acme_renewal_info\].*", re.MULTILINE | re.DOTALL)


class Certbot:
    """certbot with one configuration directory (one account) for a module's tests."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.binary = clients.require("certbot")
        self.config_dir = workdir / "config"
        self.workdir = workdir
        self.env = clients.client_environment(
            REQUESTS_CA_BUNDLE=str(lab.ca_bundle), SSL_CERT_FILE=str(lab.ca_bundle), TEST_DNS_TXT_DIR=str(lab.txt_dir)
        )

    def __call__(self, *args: str) -> clients.Run:
        return clients.run([
            self.binary, *args, "--non-interactive",
            "--config-dir", str(self.config_dir), "--work-dir", str(self.workdir / "work"),
            "--logs-dir", str(self.workdir / "logs"),
        ], self.env)

    def ok(self, *args: str) -> clients.Run:
        result = self(*args)
        assert result.returncode == 0, f"{result.describe()}\n{self.lab.logs()}"
        return result

    def certonly(self, name: str, *args: str) -> clients.Run:
        return self.ok("certonly", "--agree-tos", "--register-unsafely-without-email",
                       "--server", self.lab.directory_url, "--cert-name", name, *args)

    def renew(self, name: str, *args: str) -> clients.Run:
        return self.ok("renew", "--cert-name", name, "--no-random-sleep-on-renew", *args)

    def live(self, name: str) -> Path:
        return self.config_dir / "live" / name

    def chain(self, name: str) -> list[x509.Certificate]:
        return clients.load_chain(self.live(name) / "fullchain.pem")

    def renewal_conf(self, name: str) -> Path:
        return self.config_dir / "renewal" / f"{name}.conf"

    def debug_log(self) -> str:
        return (self.workdir / "logs" / "letsencrypt.log").read_text()


@pytest.fixture(scope="module")
def certbot(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Certbot:
    return Certbot(lab, tmp_path_factory.mktemp("certbot"))


def assert_issued(certbot: Certbot, name: str, names: set[str]) -> x509.Certificate:
    chain = certbot.chain(name)
    clients.assert_certificate(chain, clients.load_roots(certbot.lab.ca_bundle), names)
    return chain[0]


def test_http01_renewal_follows_ari_before_and_after_revocation(certbot: Certbot) -> None:
    lab, name = certbot.lab, f"ari.{TEST_ZONE}"
    certbot.certonly(name, "-d", name, "--standalone", "--http-01-port", str(lab.ports.http01))
    first = assert_issued(certbot, name, {name})

    # Not due: certbot asked the renewalInfo resource (unauthenticated GET) and stored its retry time.
    run = certbot.renew(name)
    assert "not yet due for renewal" in run.output, run.describe()
    cert_id = clients.ari_cert_id(first)
    assert re.search(rf'"GET /acme/acme/renewal-info/{re.escape(cert_id)} HTTP/1.1" 200', certbot.debug_log())
    assert "An error occurred requesting ACME Renewal Information" not in run.output, run.describe()
    assert "ari_retry_after" in certbot.renewal_conf(name).read_text()

    # Forced renewal: a new certificate for the same name.
    certbot.renew(name, "--force-renewal")
    second = assert_issued(certbot, name, {name})
    assert second.serial_number != first.serial_number
    clients.assert_not_revoked(lab.directory_url, lab.ca_bundle, second)

    # Revoked with the account key: ARI's window is now in the past ...
    run = certbot.ok("revoke", "--cert-name", name, "--reason", "superseded", "--no-delete-after-revoke")
    assert "successfully revoked" in run.output, run.describe()
    clients.assert_revoked(lab.directory_url, lab.ca_bundle, second)

    # ... so the next renew (once certbot's ARI retry time has passed) renews on ARI's word alone.
    conf = certbot.renewal_conf(name)
    conf.write_text(ARI_SECTION.sub("", conf.read_text()))
    run = certbot.renew(name)
    assert "all renewals succeeded" in run.output, run.describe()
    log = certbot.debug_log()
    assert re.search(rf'"GET /acme/acme/renewal-info/{re.escape(clients.ari_cert_id(second))} HTTP/1.1" 200', log)
    assert "Certificate is due for renewal, auto-renewing" in log
    third = assert_issued(certbot, name, {name})
    assert third.serial_number != second.serial_number


def test_dns01_hooks_renew_then_revoke_with_the_certificate_key(certbot: Certbot) -> None:
    lab, name = certbot.lab, f"revoke.{TEST_ZONE}"
    names = {name, f"*.{name}"}
    certbot.certonly(name, "-d", name, "-d", f"*.{name}", "--manual", "--preferred-challenges", "dns",
                     "--manual-auth-hook", str(AUTH_HOOK), "--manual-cleanup-hook", str(CLEANUP_HOOK),
                     "--required-profile", "tlsserver")
    first = assert_issued(certbot, name, names)

    certbot.renew(name, "--force-renewal")
    second = assert_issued(certbot, name, names)
    assert second.serial_number != first.serial_number
    assert not any(lab.txt_dir.iterdir()), "the cleanup hook left TXT records behind"

    # Signed with the certificate's own key (a `jwk` request, no account).
    live = certbot.live(name)
    by_key = ("revoke", "--server", lab.directory_url, "--cert-path", str(live / "cert.pem"),
              "--key-path", str(live / "privkey.pem"), "--reason", "cessationofoperation", "--no-delete-after-revoke")
    run = certbot.ok(*by_key)
    assert "successfully revoked" in run.output, run.describe()
    clients.assert_revoked(lab.directory_url, lab.ca_bundle, second)
    clients.assert_not_revoked(lab.directory_url, lab.ca_bundle, first)

    again = certbot(*by_key)
    assert again.returncode != 0, again.describe()
    assert "already revoked" in again.output, again.describe()
    assert "urn:ietf:params:acme:error:alreadyRevoked" in certbot.debug_log()


def test_unknown_required_profile_is_refused_as_invalid_profile(certbot: Certbot) -> None:
    lab, name = certbot.lab, f"profile.{TEST_ZONE}"
    run = certbot("certonly", "--agree-tos", "--register-unsafely-without-email", "--server", lab.directory_url,
                  "--cert-name", name, "-d", name, "--standalone", "--http-01-port", str(lab.ports.http01),
                  "--required-profile", "no-such-profile")
    assert run.returncode != 0, run.describe()
    assert "profile 'no-such-profile' is not offered" in run.output, run.describe()
    assert "urn:ietf:params:acme:error:invalidProfile" in certbot.debug_log()
    assert not certbot.live(name).exists()
