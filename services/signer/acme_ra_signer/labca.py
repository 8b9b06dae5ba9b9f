"""The lab CA: a root and an intermediate kept on disk, for ``make dev``, labs and tests ONLY.

A production RA never holds a CA key; the lab CA exists so that one machine can run the whole
ACME flow with no upstream. Files under ``ACME_RA_STATE_DIR/lab-ca`` (directory 0700)::

    root.pem  root.key  intermediate.pem  intermediate.key     (keys 0600)

Creation is safe when several processes start at once: an exclusive ``fcntl`` lock on
``.lock`` serialises them, and every file is written to a temporary name, then renamed.
The CA is loaded once; issuing does no file I/O.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_LIFETIME = dt.timedelta(days=3650)
INTERMEDIATE_LIFETIME = dt.timedelta(days=5 * 365)
# Issued certificates start a little in the past, for clients whose clock runs behind.
BACKDATE = dt.timedelta(minutes=1)
# Leaf keys the lab CA signs: RSA of these sizes, ECDSA on these curves.
RSA_KEY_BITS = range(2048, 8192 + 1)
EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
# RFC 5280 upper bound of a commonName.
MAX_COMMON_NAME = 64
ORGANIZATION = "acme-ra lab CA (NOT FOR PRODUCTION)"

ROOT_CERT = "root.pem"
ROOT_KEY = "root.key"
INTERMEDIATE_CERT = "intermediate.pem"
INTERMEDIATE_KEY = "intermediate.key"
LOCK_FILE = ".lock"


class LabCAError(Exception):
    """The files on disk do not form a usable lab CA (mismatched key, foreign intermediate...)."""


class BadIdentifier(ValueError):
    """An identifier the lab CA cannot put in a subjectAltName."""


class BadPublicKey(ValueError):
    """A key type or size the lab CA does not certify."""


@dataclass(frozen=True)
class LabCA:
    """The loaded CA: the root (trust anchor) and the intermediate that signs leaves."""

    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    @property
    def root_pem(self) -> str:
        return self.root.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def intermediate_pem(self) -> str:
        return self.intermediate.public_bytes(serialization.Encoding.PEM).decode()

    def chain_pem(self, leaf: x509.Certificate) -> str:
        """Leaf then intermediate; never the root (clients hold it already)."""
        return leaf.public_bytes(serialization.Encoding.PEM).decode() + self.intermediate_pem

    def issue_leaf(
        self,
        public_key: CertificatePublicKeyTypes,
        identifiers: list[dict[str, str]],
        lifetime: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A TLS server certificate for exactly ``identifiers`` (dns → DNSName, ip → IPAddress)."""
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size not in RSA_KEY_BITS:
                raise BadPublicKey(f"RSA keys must have 2048 to 8192 bits, not {public_key.key_size}")
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, EC_CURVES):
                raise BadPublicKey(f"ECDSA curve {public_key.curve.name} is not supported")
        else:
            raise BadPublicKey(f"{type(public_key).__name__} keys are not supported; use RSA or ECDSA")
        sans = [general_name(identifier) for identifier in identifiers]
        if not sans:
            raise BadIdentifier("no identifiers to certify")
        common_name = next(
            (
                i["value"]
                for i in identifiers
                if i["type"] == "dns" and len(i["value"]) <= MAX_COMMON_NAME
            ),
            None,
        )
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
        )
        now = now or dt.datetime.now(dt.UTC)
        not_after = min(now + lifetime, self.intermediate.not_valid_after_utc)
        issuer_ski = self.intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.intermediate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            # RFC 5280 §4.2.1.6: with an empty subject the SAN extension is critical.
            .add_extension(x509.SubjectAlternativeName(sans), critical=common_name is None)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(
                    digital_signature=True,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
                critical=False,
            )
        )
        return builder.sign(self.intermediate_key, hashes.SHA256())


def general_name(identifier: dict[str, str]) -> x509.GeneralName:
    """An ACME identifier as a subjectAltName entry."""
    kind, value = identifier.get("type"), identifier.get("value", "")
    if kind == "dns":
        if not value or not value.isascii():
            raise BadIdentifier(f"DNS identifier {value!r} is not an ASCII (A-label) name")
        return x509.DNSName(value)
    if kind == "ip":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise BadIdentifier(f"IP identifier {value!r} is not an IP address") from None
    raise BadIdentifier(f"identifier type {kind!r} is not supported")


def load_or_create(directory: Path) -> tuple[LabCA, bool]:
    """The lab CA in ``directory``, created first if needed. Returns (ca, created)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    with exclusive_lock(directory / LOCK_FILE):
        # Files are written keys first, certificates last: a certificate on disk means its key
        # is there too, and a half-created CA (a crash) is completed rather than trusted.
        root_created = not _pair_exists(directory, ROOT_CERT, ROOT_KEY)
        if root_created:
            root, root_key = _create_root(directory)
        else:
            root, root_key = _load_pair(directory / ROOT_CERT, directory / ROOT_KEY)
        # A new root needs a new intermediate, whatever is on disk.
        intermediate_created = root_created or not _pair_exists(directory, INTERMEDIATE_CERT, INTERMEDIATE_KEY)
        if intermediate_created:
            intermediate, intermediate_key = _create_intermediate(directory, root, root_key)
        else:
            intermediate, intermediate_key = _load_pair(directory / INTERMEDIATE_CERT, directory / INTERMEDIATE_KEY)
    try:
        intermediate.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as error:
        raise LabCAError(f"{directory}: the intermediate is not signed by the root ({error})") from None
    ca = LabCA(root=root, intermediate=intermediate, intermediate_key=intermediate_key)
    return ca, intermediate_created


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600) across processes."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode``: a reader sees the old file or the new, never half."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def private_key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(
    *, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pair_exists(directory: Path, cert_name: str, key_name: str) -> bool:
    return (directory / cert_name).is_file() and (directory / key_name).is_file()


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as error:
        raise LabCAError(f"{cert_path.parent}: unreadable lab CA file ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise LabCAError(f"{key_path}: expected an ECDSA key")
    if cert.public_key() != key.public_key():
        raise LabCAError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def _create_root(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name(f"acme-ra lab root {secrets.token_hex(4)}")
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_pair(directory, ROOT_CERT, ROOT_KEY, cert, key)
    return cert, key


def _create_intermediate(
    directory: Path, root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    suffix = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    suffix = str(suffix).rsplit(" ", 1)[-1]
    now = dt.datetime.now(dt.UTC)
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"acme-ra lab intermediate {suffix}"))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + INTERMEDIATE_LIFETIME, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False
        )
        .sign(root_key, hashes.SHA384())
    )
    _write_pair(directory, INTERMEDIATE_CERT, INTERMEDIATE_KEY, cert, key)
    return cert, key


def _write_pair(
    directory: Path, cert_name: str, key_name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    write_atomic(directory / key_name, private_key_pem(key), 0o600)
    write_atomic(directory / cert_name, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
