"""Real ACME clients against a running topology: finding them, their environment, their runs,
and what they got (certificates checked against the issuing roots, revocation seen through ARI).

A client that is not installed fails its tests with the line that installs it: never a skip.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from tests.support.lab import base_environment

HOOKS = Path(__file__).parent / "hooks"
# One client run, its polling included (seconds).
CLIENT_TIMEOUT_SECONDS = 150
# Variables this machine sets globally that would make a client trust the system roots.
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "LEGO_CA_CERTIFICATES")

VENV_BIN = Path(sys.executable).parent
# How to install each client (Debian packages; acme-tiny from PyPI, pinned in the test extras).
INSTALL_LINES = {
    "lego": "apt-get install -y lego",
    "dehydrated": "apt-get install -y dehydrated",
    "uacme": "apt-get install -y uacme",
    "unshare": "apt-get install -y util-linux",
    "openssl": "apt-get install -y openssl",
    "curl": "apt-get install -y curl",
    "socat": "apt-get install -y socat",
    "pebble": "apt-get install -y pebble",
    "acme-tiny": f"{VENV_BIN}/pip install acme-tiny==5.0.3  (make test installs it with the test extras)",
}


def require(name: str) -> str:
    """The client's executable (this virtualenv first, then PATH); a missing one fails the test."""
    beside = VENV_BIN / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: the interop tests need it. Install it with: {INSTALL_LINES[name]}",
                    pytrace=False)
    return found


def client_environment(**extra: str) -> dict[str, str]:
    """This process's environment less ACME_RA_* and the machine's CA variables, plus ``extra``."""
    env = {key: value for key, value in base_environment().items() if key not in CA_VARIABLES}
    env.update(extra)
    return env


@dataclass
class Run:
    args: list[str]
    returncode: int
    output: str

    def describe(self) -> str:
        return f"exit status {self.returncode}: {' '.join(self.args)}\n{self.output[-12000:]}"


def run(args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> Run:
    """Run a client to the end, its stdout and stderr together."""
    completed = subprocess.run(list(args), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=CLIENT_TIMEOUT_SECONDS, check=False)
    return Run(list(args), completed.returncode, completed.stdout)


# What the clients got ---------------------------------------------------------------------------

def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def load_roots(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def san_names(certificate: x509.Certificate) -> set[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def assert_certificate(chain: list[x509.Certificate], roots: list[x509.Certificate], names: set[str]) -> None:
    """The leaf names exactly ``names`` and chains to one of ``roots`` for each of them."""
    assert san_names(chain[0]) == names, f"the leaf names {san_names(chain[0])}, expected {names}"
    verifier = PolicyBuilder().store(Store(roots)).time(dt.datetime.now(dt.UTC))
    for name in names:
        verifier.build_server_verifier(x509.DNSName(name.replace("*", "any", 1))).verify(chain[0], chain[1:])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ari_cert_id(certificate: x509.Certificate) -> str:
    """RFC 9773 certID: base64url(AKI keyIdentifier) "." base64url(serial DER INTEGER content)."""
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = certificate.serial_number
    return f"{b64url(aki.key_identifier)}.{b64url(serial.to_bytes(serial.bit_length() // 8 + 1, 'big'))}"


def renewal_window(directory_url: str, trust: Path, certificate: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    """The suggested renewal window, as any client may GET it (unauthenticated)."""
    with httpx.Client(verify=ssl.create_default_context(cafile=str(trust)), trust_env=False, timeout=10) as http:
        base = http.get(directory_url).json()["renewalInfo"]
        response = http.get(f"{base.rstrip('/')}/{ari_cert_id(certificate)}")
    assert response.status_code == 200, response.text
    window = response.json()["suggestedWindow"]
    return dt.datetime.fromisoformat(window["start"]), dt.datetime.fromisoformat(window["end"])


def assert_revoked(directory_url: str, trust: Path, certificate: x509.Certificate) -> None:
    """Revocation shows in ARI: the suggested window is already over (renew now)."""
    start, end = renewal_window(directory_url, trust, certificate)
    assert end <= dt.datetime.now(dt.UTC), f"renewal window {start}..{end} not in the past: not revoked?"


def assert_not_revoked(directory_url: str, trust: Path, certificate: x509.Certificate) -> None:
    start, end = renewal_window(directory_url, trust, certificate)
    assert start > dt.datetime.now(dt.UTC), f"renewal window {start}..{end} already open"
