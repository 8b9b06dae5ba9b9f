"""Fixtures for the signer tests: settings in a temporary state dir, CSRs, a migrated SQLite DB."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import Account, Order, new_id, utcnow

EXTERNAL_HOST = "acme.example.test"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path / "var",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'acme-ra.db'}",
        external_url=f"https://{EXTERNAL_HOST}:8443",
        nats_url="",
        upstream="lab",
        tls_cert_file=None,
        tls_key_file=None,
        cert_lifetime_days=90,
    )


@pytest.fixture
def db_url(settings: Settings) -> str:
    """A migrated SQLite database (sync fixture: ``upgrade`` runs its own event loop)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    return settings.effective_database_url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.dispose()


def make_csr(names: list[str], key: PrivateKey | None = None) -> bytes:
    """A DER CSR whose SANs are ``names`` (IP literals become IPAddress entries)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def identifiers(*names: str) -> list[dict[str, str]]:
    result = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            result.append({"type": "ip", "value": name})
        except ValueError:
            result.append({"type": "dns", "value": name})
    return result


def verify_chain(chain_pem: str | bytes, root: x509.Certificate, name: str) -> list[x509.Certificate]:
    """Verify a leaf-first PEM chain to ``root`` as a TLS client would, for ``name``."""
    certs = x509.load_pem_x509_certificates(chain_pem.encode() if isinstance(chain_pem, str) else chain_pem)
    try:
        subject: x509.DNSName | x509.IPAddress = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(subject)
    return verifier.verify(certs[0], certs[1:])


async def insert_order(
    db: Database,
    names: list[str],
    csr: bytes | None,
    status: str = "processing",
) -> str:
    """An account and one order (``status``, ``csr``) for ``names``; returns the order id."""
    async with db.transaction() as session:
        account = Account(key_thumbprint=new_id(), jwk={"kty": "EC"})
        session.add(account)
        await session.flush()
        order = Order(
            account_id=account.id,
            provisioner="acme",
            status=status,
            expires=utcnow() + dt.timedelta(days=1),
            identifiers=identifiers(*names),
            not_before=None,
            not_after=None,
            csr=csr,
            trace_context="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        session.add(order)
        await session.flush()
        return order.id
