"""acme.sh 3.1.4 (kept in ../shared/clients/, no package registry ships it) issues an IP-address
certificate through the running services, answering http-01 (--standalone) and tls-alpn-01
(--alpn) itself with socat on the lab's validation ports.

acme.sh puts O=acme.sh, not a common name, in the subject of an IP-address CSR, and asks for the
serverAuth and clientAuth EKUs: acme-ra answered badCSR ("CSR subject may only hold a common
name") before issue 18, where Pebble and Let's Encrypt issue.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from tests.support.lab import Lab

from . import clients

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ACME_SH_PATH = Path("shared", "clients", "acme.sh", "acme.sh")
# Answers the lab's validator connects to: IPv4 loopback (the lab lets the validator reach it).
ADDRESS = "127.0.0.1"


def acme_sh() -> Path:
    """acme.sh at ../shared/clients/ from the project's root (CI's layout); from a git worktree,
    the same path from a directory further up."""
    for parent in ROOT.parents:
        if (parent / ACME_SH_PATH).is_file():
            return parent / ACME_SH_PATH
    pytest.fail(f"acme.sh is not at ../{ACME_SH_PATH} from {ROOT}: the interop tests need acme.sh 3.1.4 there "
                "(see ../shared/clients/README.md)", pytrace=False)


def issue(lab: Lab, tmp_path: Path, *solver: str) -> x509.Certificate:
    clients.require("socat")
    home = tmp_path / "acme.sh"
    home.mkdir()
    # acme.sh edits its own directory on some paths: run a copy.
    script = home / "acme.sh"
    shutil.copy(acme_sh(), script)
    env = clients.client_environment(HOME=str(tmp_path), LE_WORKING_DIR=str(home))
    args = ["sh", str(script), "--home", str(home), "--config-home", str(home), "--cert-home", str(home / "certs"),
            "--server", lab.directory_url, "--ca-bundle", str(lab.ca_bundle), "--no-color",
            "--issue", "-d", ADDRESS, *solver]
    run = clients.run(args, env, cwd=home)
    assert run.returncode == 0, f"{run.describe()}\n{lab.logs()}"
    folder = next((home / "certs").glob(f"{ADDRESS}*"))
    chain = clients.load_chain(folder / "fullchain.cer")
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ADDRESS)]
    verifier = PolicyBuilder().store(Store(clients.load_roots(lab.ca_bundle))).time(dt.datetime.now(dt.UTC))
    verifier.build_server_verifier(x509.IPAddress(ipaddress.ip_address(ADDRESS))).verify(leaf, chain[1:])
    return leaf


def test_ip_certificate_with_standalone_http01(lab: Lab, tmp_path: Path) -> None:
    issue(lab, tmp_path, "--standalone", "--httpport", str(lab.ports.http01))


def test_ip_certificate_with_alpn_tls_alpn01(lab: Lab, tmp_path: Path) -> None:
    issue(lab, tmp_path, "--alpn", "--tlsport", str(lab.ports.tls_alpn))
