"""lego (Debian's package) issues, renews and revokes through the running services with http-01,
tls-alpn-01 and dns-01 (its `exec` provider writing to the test DNS server); and the same client
through a topology whose upstream CA is a real Pebble."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.support.lab import TEST_ZONE, Lab

from . import clients
from .conftest import PebbleLab

pytestmark = pytest.mark.integration

# `lego renew --days N` renews when fewer than N days are left: always, with this.
RENEW_ALWAYS_DAYS = "10000"
EXEC_HOOK = clients.HOOKS / "lego-dns-exec"


class Lego:
    """lego with one --path (one account) against one directory."""

    def __init__(self, lab: Lab, trust: Path, workdir: Path) -> None:
        self.lab = lab
        self.binary = clients.require("lego")
        self.path = workdir
        self.env = clients.client_environment(
            LEGO_CA_CERTIFICATES=str(trust), SSL_CERT_FILE=str(trust),
            # exec provider: the hook, and short waits (defaults: 60 s between names, 2 s polls)
            EXEC_PATH=str(EXEC_HOOK), TEST_DNS_TXT_DIR=str(lab.txt_dir),
            EXEC_PROPAGATION_TIMEOUT="30", EXEC_POLLING_INTERVAL="1", EXEC_SEQUENCE_INTERVAL="1",
        )

    def __call__(self, names: list[str], solver: list[str], *command: str) -> clients.Run:
        args = [self.binary, "--path", str(self.path), "--server", self.lab.directory_url,
                "--accept-tos", "--email", "interop@example.com", *solver]
        for name in names:
            args += ["-d", name]
        result = clients.run([*args, *command], self.env)
        assert result.returncode == 0, f"{result.describe()}\n{self.lab.logs()}"
        return result

    def chain(self, name: str) -> list[x509.Certificate]:
        return clients.load_chain(self.path / "certificates" / f"{name.replace('*', '_')}.crt")

    def http01(self) -> list[str]:
        return ["--http", "--http.port", f"127.0.0.1:{self.lab.ports.http01}"]

    def tls_alpn01(self) -> list[str]:
        return ["--tls", "--tls.port", f"127.0.0.1:{self.lab.ports.tls_alpn}"]

    def dns01(self) -> list[str]:
        # lego checks that the TXT record is visible before it answers the challenge: ask the
        # test DNS server, and only it (disable-cp: no search for the zone's authoritative servers).
        resolver = self.lab.topology.settings.dns_resolvers
        return ["--dns", "exec", "--dns.resolvers", resolver, "--dns.disable-cp"]


@pytest.fixture(scope="module")
def lego(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Lego:
    return Lego(lab, lab.ca_bundle, tmp_path_factory.mktemp("lego"))


def issued(lego: Lego, name: str, names: set[str], roots: list[x509.Certificate]) -> x509.Certificate:
    chain = lego.chain(name)
    clients.assert_certificate(chain, roots, names)
    return chain[0]


def test_http01_issue_renew_revoke(lego: Lego) -> None:
    lab, name, roots = lego.lab, f"lego-http.{TEST_ZONE}", clients.load_roots(lego.lab.ca_bundle)
    lego([name], lego.http01(), "run")
    first = issued(lego, name, {name}, roots)

    run = lego([name], lego.http01(), "renew", "--days", RENEW_ALWAYS_DAYS, "--no-random-sleep")
    assert "authorization already valid; skipping challenge" in run.output, run.describe()  # reused
    second = issued(lego, name, {name}, roots)
    assert second.serial_number != first.serial_number

    lego([name], [], "revoke", "--reason", "4")  # superseded
    clients.assert_revoked(lab.directory_url, lab.ca_bundle, second)


def test_tls_alpn01_with_deactivated_authorizations(lego: Lego) -> None:
    lab, name, roots = lego.lab, f"lego-tls.{TEST_ZONE}", clients.load_roots(lego.lab.ca_bundle)
    lego([name], lego.tls_alpn01(), "run", "--always-deactivate-authorizations", "true")
    first = issued(lego, name, {name}, roots)

    # The authorization was deactivated after issuance: renewing validates again.
    run = lego([name], lego.tls_alpn01(), "renew", "--days", RENEW_ALWAYS_DAYS, "--no-random-sleep")
    assert "Trying to solve TLS-ALPN-01" in run.output, run.describe()
    assert "authorization already valid" not in run.output, run.describe()
    second = issued(lego, name, {name}, roots)
    assert second.serial_number != first.serial_number

    lego([name], [], "revoke")
    clients.assert_revoked(lab.directory_url, lab.ca_bundle, second)


def test_dns01_exec_provider_wildcard_issue_renew_revoke(lego: Lego) -> None:
    lab, name, roots = lego.lab, f"lego-dns.{TEST_ZONE}", clients.load_roots(lego.lab.ca_bundle)
    names = [name, f"*.{name}"]
    run = lego(names, lego.dns01(), "run")
    assert run.output.count("The server validated our request") == 2, run.describe()
    first = issued(lego, name, set(names), roots)
    assert not any(lab.txt_dir.iterdir()), "the exec hook left TXT records behind"

    lego(names, lego.dns01(), "renew", "--days", RENEW_ALWAYS_DAYS, "--no-random-sleep")
    second = issued(lego, name, set(names), roots)
    assert second.serial_number != first.serial_number

    lego([name], [], "revoke", "--reason", "5")  # cessationOfOperation (lego revokes per -d name)
    clients.assert_revoked(lab.directory_url, lab.ca_bundle, second)


def pebble_status(pebble_lab: PebbleLab, certificate: x509.Certificate) -> str:
    context = ssl.create_default_context(cafile=str(pebble_lab.pebble.ca_bundle))
    with httpx.Client(verify=context, trust_env=False, timeout=10) as http:
        response = http.get(f"{pebble_lab.pebble.management_url}/cert-status-by-serial/{certificate.serial_number:x}")
    response.raise_for_status()
    return str(response.json()["Status"])


def test_http01_through_a_pebble_upstream(pebble_lab: PebbleLab, tmp_path: Path) -> None:
    lab, name = pebble_lab.lab, f"lego-pebble.{TEST_ZONE}"
    lego = Lego(lab, pebble_lab.trust, tmp_path)
    roots = [pebble_lab.pebble.root()]
    lego([name], lego.http01(), "run")
    first = issued(lego, name, {name}, roots)  # signed by Pebble, through acme-ra
    assert pebble_status(pebble_lab, first) == "Valid"

    lego([name], lego.http01(), "renew", "--days", RENEW_ALWAYS_DAYS, "--no-random-sleep")
    second = issued(lego, name, {name}, roots)
    assert second.serial_number != first.serial_number

    lego([name], [], "revoke")
    assert pebble_status(pebble_lab, second) == "Revoked"  # acme-ra revoked it at the upstream
    assert pebble_status(pebble_lab, first) == "Valid"
    clients.assert_revoked(pebble_lab.directory_url, pebble_lab.trust, second)
