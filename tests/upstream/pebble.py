"""A real Pebble (Debian's ``pebble`` package, 2.4.0) for the upstream tests.

Each ``Pebble`` gets free ports, a TLS certificate made here (its own throw-away CA, written to
``ca_bundle``), EAB required with one MAC key, always-valid challenges and no nonce rejection.
``restart()`` keeps the ports and the TLS material; Pebble itself forgets every account, order
and certificate, as it does on any restart.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acme_ra_tools.supervisor import free_port

# ACME_RA_TEST_PEBBLE: another pebble binary (default: the one on PATH, Debian's /usr/bin/pebble).
PEBBLE = os.environ.get("ACME_RA_TEST_PEBBLE") or shutil.which("pebble") or "/usr/bin/pebble"
INSTALL_HINT = "apt-get install -y pebble  (Debian package: /usr/bin/pebble 2.4.0)"
EAB_KID = "acme-ra-test-kid"
# How long to wait for Pebble to listen after start (seconds).
START_TIMEOUT_SECONDS = 20.0


def require_pebble() -> str:
    """The pebble binary; a missing one fails the test loudly (never a silent skip)."""
    if not os.access(PEBBLE, os.X_OK):
        raise RuntimeError(f"pebble is not installed: the upstream tests need it. Install it with: {INSTALL_HINT}")
    return PEBBLE


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports."""
    return [free_port() for _ in range(count)]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def upstream_env(pebble: Pebble, secret_key: str) -> dict[str, str]:
    """acme-ra's settings for ``pebble`` as its ACME upstream (EAB), with ``secret_key``."""
    return {
        "ACME_RA_UPSTREAM": "acme",
        "ACME_RA_UPSTREAM_DIRECTORY_URL": pebble.directory_url,
        "ACME_RA_UPSTREAM_EAB_KID": pebble.eab_kid,
        "ACME_RA_UPSTREAM_EAB_HMAC_KEY": pebble.eab_hmac_key,
        "ACME_RA_UPSTREAM_CA_BUNDLE": str(pebble.ca_bundle),
        "ACME_RA_SECRET_KEY": secret_key,
    }


def make_tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost: (ca, cert, key) paths."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test TLS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


class Pebble:
    """One Pebble process; ``directory_url``, ``eab_kid``/``eab_hmac_key``, ``ca_bundle``."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, dns_server: str | None = None) -> None:
        """``dns_server`` (host:port): Pebble validates for real, resolving through it (its
        ``-dnsserver``); else every challenge is valid (``PEBBLE_VA_ALWAYS_VALID``)."""
        self.binary = require_pebble()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_bundle, cert, key = make_tls_material(workdir / "tls")
        # http_port: where Pebble fetches http-01 key authorizations from (each name's address).
        self.port, self.management_port, self.http_port, tls_port = free_ports(4)
        self.eab_kid = EAB_KID
        self.eab_hmac_key = b64url(secrets.token_bytes(32))
        self.config_path = workdir / "pebble-config.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{self.management_port}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": self.http_port,
                        "tlsPort": tls_port,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": True,
                        "externalAccountMACKeys": {self.eab_kid: self.eab_hmac_key},
                    }
                }
            )
        )
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PEBBLE_VA_ALWAYS_VALID": "0" if dns_server else "1",
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_WFE_ORDERS_PER_PAGE": "1000",
            **(env or {}),
        }
        self.args = ["-dnsserver", dns_server] if dns_server else []
        self.log_path = workdir / "pebble.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-config", str(self.config_path), "-strict=false", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pebble exited at start:\n{self.log_path.read_text()[-2000:]}")
            try:
                for port in (self.port, self.management_port):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pebble did not listen within {START_TIMEOUT_SECONDS}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stop and start on the same ports: Pebble forgets its accounts, orders and certificates."""
        self.stop()
        self.start()

    # Management API -------------------------------------------------------------------------

    def _management(self, path: str) -> httpx.Response:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
            return client.get(self.management_url + path)

    def intermediate(self, index: int = 0) -> x509.Certificate:
        response = self._management(f"/intermediates/{index}")
        response.raise_for_status()
        return x509.load_pem_x509_certificate(response.content)

    def root(self, index: int = 0) -> x509.Certificate:
        response = self._management(f"/roots/{index}")
        response.raise_for_status()
        return x509.load_pem_x509_certificate(response.content)

    def cert_status(self, serial_hex: str) -> dict[str, Any]:
        response = self._management(f"/cert-status-by-serial/{serial_hex}")
        response.raise_for_status()
        return dict(response.json())

    def issued_count(self) -> int:
        """Certificates Pebble issued since the fixture was created (from its log, over restarts)."""
        return len(re.findall(r"Issued certificate serial", self.log_path.read_text()))
