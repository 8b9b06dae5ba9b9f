"""The admin listener over HTTPS (ACME_RA_ADMIN_TLS_CERT_FILE / _KEY_FILE): the admin service as
its own process with a certificate from a test CA, reached by real HTTPS clients (httpx, Python's
ssl, and ``acme-ra --url https://...`` trusting ACME_RA_ADMIN_TLS_CA)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from acme_ra.config import ENV_PREFIX, Settings
from acme_ra_tools.supervisor import free_port
from tests.support import database
from tests.support.lab import base_environment

from .conftest import acme_ra

# How long the admin service may take to answer over HTTPS (seconds): a busy machine.
START_SECONDS = 60


def write_tls(directory: Path) -> tuple[Path, Path, Path, bytes]:
    """A test CA and a server certificate for 127.0.0.1 and localhost: (CA file, certificate file,
    key file, the certificate's DER)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-ra admin test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "admin.crt", directory / "admin.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file, leaf.public_bytes(serialization.Encoding.DER)


@dataclass
class TlsAdmin:
    url: str
    port: int
    env: dict[str, str]
    ca_file: Path
    leaf_der: bytes
    token: str


@pytest.fixture
def tls_admin(tmp_path: Path) -> Iterator[TlsAdmin]:
    ca_file, cert_file, key_file, leaf_der = write_tls(tmp_path)
    port = free_port()
    with database.fresh_database(tmp_path / "db") as url:
        env = base_environment() | {
            f"{ENV_PREFIX}STATE_DIR": str(tmp_path / "var"), f"{ENV_PREFIX}DATABASE_URL": url,
            f"{ENV_PREFIX}ADMIN_LISTEN": f"127.0.0.1:{port}", f"{ENV_PREFIX}ADMIN_TLS_CERT_FILE": str(cert_file),
            f"{ENV_PREFIX}ADMIN_TLS_KEY_FILE": str(key_file), f"{ENV_PREFIX}SIGNER_LISTEN": "127.0.0.1:9",
        }
        acme_ra(["db", "migrate"], env, check=True)
        token = json.loads(acme_ra(["admin-token", "create", "--label", "tls-test", "--json"], env,
                                   check=True).stdout)["token"]
        log = tmp_path / "admin.log"
        with log.open("wb") as out:
            child = subprocess.Popen([sys.executable, "-m", "acme_ra_admin"], env=env, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            base = f"https://127.0.0.1:{port}"
            deadline = time.monotonic() + START_SECONDS
            while True:
                assert child.poll() is None, log.read_text(errors="replace")
                try:
                    if httpx.get(f"{base}/readyz", verify=ssl.create_default_context(cafile=str(ca_file)), trust_env=False, timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{base} did not answer:\n{log.read_text(errors='replace')}"
                time.sleep(0.3)
            yield TlsAdmin(base, port, env, ca_file, leaf_der, token)
        finally:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)


def test_the_admin_listener_speaks_tls_with_its_certificate(tls_admin: TlsAdmin) -> None:
    context = ssl.create_default_context(cafile=str(tls_admin.ca_file))
    with socket.create_connection(("127.0.0.1", tls_admin.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.getpeercert(binary_form=True) == tls_admin.leaf_der
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with httpx.Client(base_url=tls_admin.url, verify=ssl.create_default_context(cafile=str(tls_admin.ca_file)), trust_env=False, timeout=10) as client:
        auth = {"Authorization": f"Bearer {tls_admin.token}"}
        assert client.get("/api/eab-keys", headers=auth).json() == []
        assert client.get("/api/eab-keys").status_code == 401
        login = client.post("/login", data={"token": tls_admin.token})
        assert login.status_code == 303 and "; secure" in login.headers["set-cookie"].lower()
    # Plain HTTP on the TLS port gets no answer; a client that does not trust the test CA, no connection.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_admin.port}/readyz", trust_env=False, timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_admin.url}/readyz", trust_env=False, timeout=10)


def test_the_cli_reaches_the_tls_listener_trusting_admin_tls_ca(tls_admin: TlsAdmin) -> None:
    remote = tls_admin.env | {f"{ENV_PREFIX}ADMIN_URL": tls_admin.url, f"{ENV_PREFIX}ADMIN_TOKEN": tls_admin.token}
    untrusted = acme_ra(["eab", "list"], remote)
    assert untrusted.returncode == 1 and "cannot reach the admin API" in untrusted.stderr
    trusted = remote | {f"{ENV_PREFIX}ADMIN_TLS_CA": str(tls_admin.ca_file)}
    key = json.loads(acme_ra(["eab", "create", "--label", "over-tls", "--json"], trusted, check=True).stdout)
    [entry] = json.loads(acme_ra(["audit", "list", "--action", "eab_key.create", "--json"], trusted,
                                 check=True).stdout)
    assert entry["subject"] == key["kid"] and entry["actor"] == "tls-test" and entry["client"] == "127.0.0.1"


def test_the_certificate_and_key_go_together(tmp_path: Path) -> None:
    _, cert_file, key_file, _ = write_tls(tmp_path)
    with pytest.raises(ValidationError, match="ACME_RA_ADMIN_TLS_CERT_FILE and ACME_RA_ADMIN_TLS_KEY_FILE go together"):
        Settings(admin_tls_cert_file=cert_file)
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(admin_tls_cert_file=cert_file, admin_tls_key_file=tmp_path / "missing.key")
    settings = Settings(admin_tls_cert_file=cert_file, admin_tls_key_file=key_file, admin_listen="127.0.0.1:9443")
    assert settings.admin_base_url == "https://127.0.0.1:9443"
