"""The lab TLS CA: a throw-away CA (kept across runs) and the server certificates it issues to
HAProxy, the frontends and Pebble, for ``make lab`` and docker-compose's init job. Labs only."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Lifetime of the lab TLS CA and of the certificates it issues (renewed in their last third).
TLS_CA_LIFETIME = dt.timedelta(days=3650)
TLS_LEAF_LIFETIME = dt.timedelta(days=90)
# The names every lab server certificate carries unless told otherwise.
LOCAL_NAMES = ["localhost", "127.0.0.1", "::1"]


@dataclass(frozen=True)
class TlsMaterial:
    """The lab TLS CA and what it issued, in one directory."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def combined(self, name: str) -> Path:
        """Chain and key in one file (HAProxy's ``crt``)."""
        return self.directory / f"{name}-combined.pem"


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme-ra lab (not for production)"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` (the file never exists with looser permissions)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _load_ca(material: TlsMaterial, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key_path = material.directory / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(material.ca.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc - now > TLS_CA_LIFETIME / 3:
            return cert, key
    except (OSError, ValueError):
        pass
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("acme-ra lab TLS CA")
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + TLS_CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _pem_key(key), 0o600)
    write_private(material.ca, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _leaf_is_good(material: TlsMaterial, name: str, ca: x509.Certificate, names: list[str], now: dt.datetime) -> bool:
    try:
        leaf = x509.load_pem_x509_certificate(material.cert(name).read_bytes())
        key = serialization.load_pem_private_key(material.key(name).read_bytes(), password=None)
        leaf.verify_directly_issued_by(ca)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # noqa: BLE001 - missing, foreign or malformed: issue anew
        return False
    wanted = {_general_name(n) for n in names}
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    return (key.public_key() == leaf.public_key() and wanted <= set(sans)
            and leaf.not_valid_after_utc - now > lifetime / 3 and material.combined(name).is_file())


def ensure_tls_material(directory: Path, leaves: Mapping[str, list[str]]) -> TlsMaterial:
    """The lab TLS CA (kept across runs) and one server certificate per entry of ``leaves``
    (``{"haproxy": ["localhost", ...]}``), each issued again only when missing or stale."""
    now = dt.datetime.now(dt.UTC)
    material = TlsMaterial(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _load_ca(material, now)
    for leaf_name, names in leaves.items():
        if _leaf_is_good(material, leaf_name, ca, names, now):
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + TLS_LEAF_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        write_private(material.key(leaf_name), _pem_key(key), 0o600)
        write_private(material.cert(leaf_name), cert_pem, 0o644)
        write_private(material.combined(leaf_name), cert_pem + _pem_key(key), 0o600)
    return material
