"""acme-tiny (PyPI, pinned in the test extras) issues and renews through the running services
with http-01: it writes token files into --acme-dir, which the test's web server serves.
acme-tiny has no revocation command; its trust is Python's, so SSL_CERT_FILE."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.lab import TEST_ZONE, Lab

from . import clients
from .webroot import ChallengeWebServer

pytestmark = pytest.mark.integration


def openssl(*args: str) -> None:
    subprocess.run([clients.require("openssl"), *args], check=True, capture_output=True, timeout=60)


def test_http01_issue_then_renew(lab: Lab, webroot: ChallengeWebServer, tmp_path: Path) -> None:
    acme_tiny = clients.require("acme-tiny")
    name = f"acme-tiny.{TEST_ZONE}"
    account_key, domain_key, csr = tmp_path / "account.key", tmp_path / "domain.key", tmp_path / "domain.csr"
    openssl("genrsa", "-out", str(account_key), "2048")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(domain_key),
            "-subj", f"/CN={name}", "-out", str(csr))
    env = clients.client_environment(SSL_CERT_FILE=str(lab.ca_bundle))
    # --disable-check: acme-tiny's own check of the token URL uses the system resolver, which
    # does not know the test zone (the validator asks the test DNS server).
    args = [acme_tiny, "--account-key", str(account_key), "--csr", str(csr), "--acme-dir", str(webroot.directory),
            "--directory-url", lab.directory_url, "--contact", "mailto:interop@example.com", "--disable-check"]
    serials = []
    # The second run finds its account (newAccount answers 200) and reuses the valid authorization.
    expected_lines = [("Registered!", f"{name} verified!"), ("Already registered!", f"Already verified: {name}")]
    for attempt, expected in enumerate(expected_lines):
        run = clients.run(args, env)
        assert run.returncode == 0, f"{run.describe()}\n{lab.logs()}"
        assert all(line in run.output for line in expected), run.describe()
        chain_path = tmp_path / f"chain-{attempt}.pem"
        chain_path.write_text(run.output[run.output.index("-----BEGIN CERTIFICATE-----"):])
        chain = clients.load_chain(chain_path)
        clients.assert_certificate(chain, clients.load_roots(lab.ca_bundle), {name})
        serials.append(chain[0].serial_number)
    assert serials[0] != serials[1]
    assert any(path.startswith("/.well-known/acme-challenge/") for path in webroot.requests)
