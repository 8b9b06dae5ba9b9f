"""dehydrated (Debian's package: bash, curl and openssl) issues, renews and revokes through the
running services: http-01 with its WELLKNOWN directory served by the test's web server, dns-01
with a hook script writing to the test DNS server. Trust: curl's CURL_CA_BUNDLE."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from tests.support.lab import TEST_ZONE, Lab

from . import clients
from .webroot import ChallengeWebServer

pytestmark = pytest.mark.integration

HOOK = clients.HOOKS / "dehydrated-hook"


class Dehydrated:
    """dehydrated with one BASEDIR (one account, registered once) for a module's tests."""

    def __init__(self, lab: Lab, basedir: Path) -> None:
        self.lab = lab
        self.binary = clients.require("dehydrated")
        clients.require("curl")
        self.basedir = basedir
        self.config = basedir / "config"
        self.env = clients.client_environment(
            CURL_CA_BUNDLE=str(lab.ca_bundle), SSL_CERT_FILE=str(lab.ca_bundle), TEST_DNS_TXT_DIR=str(lab.txt_dir)
        )
        self.configure(basedir / "unused-wellknown")

    def configure(self, wellknown: Path) -> None:
        """dehydrated's own config file (never /etc/dehydrated): where it writes http-01 tokens."""
        self.config.write_text(
            f'CA="{self.lab.directory_url}"\n'
            f'BASEDIR="{self.basedir}"\n'
            f'WELLKNOWN="{wellknown}"\n'
            'CHALLENGETYPE="http-01"\n'
            "KEY_ALGO=prime256v1\n"
            "KEYSIZE=2048\n"  # the account key is RSA in 0.7.0: the default 4096 bits is slow to make
        )

    def __call__(self, *args: str) -> clients.Run:
        # --accept-terms: the first run registers the account (the server's terms, if any, agreed)
        result = clients.run([self.binary, "--config", str(self.config), "--accept-terms", *args], self.env)
        assert result.returncode == 0, f"{result.describe()}\n{self.lab.logs()}"
        return result

    def issued(self, name: str, names: set[str]) -> x509.Certificate:
        chain = clients.load_chain(self.basedir / "certs" / name / "fullchain.pem")
        clients.assert_certificate(chain, clients.load_roots(self.lab.ca_bundle), names)
        return chain[0]


@pytest.fixture(scope="module")
def dehydrated(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Dehydrated:
    return Dehydrated(lab, tmp_path_factory.mktemp("dehydrated"))


def test_http01_issue_renew_revoke(dehydrated: Dehydrated, webroot: ChallengeWebServer) -> None:
    lab, name = dehydrated.lab, f"dehydrated.{TEST_ZONE}"
    dehydrated.configure(webroot.directory)
    run = dehydrated("--cron", "--domain", name)
    assert "Challenge is valid!" in run.output, run.describe()
    assert any(path.startswith("/.well-known/acme-challenge/") for path in webroot.requests)
    first = dehydrated.issued(name, {name})

    run = dehydrated("--cron", "--domain", name, "--force")
    assert "Found valid authorization" in run.output, run.describe()  # reused, no challenge
    second = dehydrated.issued(name, {name})
    assert second.serial_number != first.serial_number

    run = dehydrated("--revoke", str(dehydrated.basedir / "certs" / name / "cert.pem"))
    assert "Done." in run.output, run.describe()
    clients.assert_revoked(lab.directory_url, lab.ca_bundle, second)


def test_dns01_hook_for_a_wildcard(dehydrated: Dehydrated) -> None:
    lab, name = dehydrated.lab, f"dehydrated-dns.{TEST_ZONE}"
    run = dehydrated("--cron", "--domain", name, "--domain", f"*.{name}", "--challenge", "dns-01",
                     "--hook", str(HOOK))
    assert run.output.count("Challenge is valid!") == 2, run.describe()
    dehydrated.issued(name, {name, f"*.{name}"})
    assert not any(lab.txt_dir.iterdir()), "the hook left TXT records behind"
