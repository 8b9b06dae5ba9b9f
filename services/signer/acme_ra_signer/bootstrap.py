"""``python -m acme_ra_signer bootstrap``: the TLS material a fresh installation needs.

Synchronous, needs neither NATS nor the database. With the lab upstream it:
1. loads or creates the lab CA (``ACME_RA_STATE_DIR/lab-ca``);
2. writes ``ACME_RA_STATE_DIR/ca-bundle.pem``, the root ACME clients must trust;
3. unless ``ACME_RA_TLS_CERT_FILE`` is set, issues the frontend's TLS certificate for the
   external URL's host, localhost, 127.0.0.1 and ::1 — again only when it is missing, does not
   chain to the current lab CA, lacks one of those names, or is in the last third of its life.
Safe to run at every start and from several processes at once.

With the acme upstream there is no lab CA (no CA private key anywhere): unless
``ACME_RA_TLS_CERT_FILE`` is set, the frontend's certificate comes from the upstream CA
(``frontend_tls``), which needs the migrated database for the upstream account.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from acme_ra.config import Settings
from acme_ra_signer import labca
from acme_ra_signer.frontend_tls import identifier_type

log = logging.getLogger("acme_ra_signer.bootstrap")

CA_BUNDLE = "ca-bundle.pem"
# Lifetime of the lab-issued frontend TLS certificate; renewed in its last third.
FRONTEND_CERT_LIFETIME = dt.timedelta(days=90)
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class BootstrapError(Exception):
    """Bootstrap cannot proceed with this configuration."""


@dataclass(frozen=True)
class BootstrapResult:
    ca_bundle: Path
    lab_ca_created: bool
    # "issued", "kept" (still good) or "configured" (ACME_RA_TLS_CERT_FILE is used).
    frontend_cert: str


def run(settings: Settings, now: dt.datetime | None = None) -> BootstrapResult:
    """Make sure the lab CA, the CA bundle and the frontend certificate exist; log one line."""
    if settings.upstream == "acme":
        return run_acme(settings)
    if settings.upstream != "lab":
        raise BootstrapError(f"ACME_RA_UPSTREAM={settings.upstream}: nothing to bootstrap for it")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    ca, created = labca.load_or_create(settings.lab_ca_dir)
    bundle = settings.state_dir / CA_BUNDLE
    root_pem = ca.root_pem.encode()
    if not bundle.is_file() or bundle.read_bytes() != root_pem:
        labca.write_atomic(bundle, root_pem, 0o644)
    if settings.tls_cert_file is not None:
        frontend = "configured"
    else:
        cert_path, key_path = settings.frontend_tls_paths
        frontend = ensure_frontend_cert(
            ca, cert_path, key_path, frontend_names(settings.external_url), now
        )
    result = BootstrapResult(ca_bundle=bundle, lab_ca_created=created, frontend_cert=frontend)
    log.info(
        "bootstrap: lab CA (NOT FOR PRODUCTION) %s, CA bundle written, frontend certificate %s",
        "created" if created else "loaded",
        frontend,
        extra={
            "ca_bundle": str(bundle),
            "lab_ca_dir": str(settings.lab_ca_dir),
            "frontend_cert": str(settings.frontend_tls_paths[0]),
        },
    )
    return result


def run_acme(settings: Settings) -> BootstrapResult:
    """The frontend certificate from the upstream CA (or the operator's own pair)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    bundle = settings.state_dir / CA_BUNDLE
    if settings.tls_cert_file is not None:
        frontend = "configured"
    else:
        from sqlalchemy.exc import SQLAlchemyError

        from acme_ra_signer.upstream.catalog import UpstreamConfigError

        try:
            frontend = asyncio.run(_frontend_cert_from_upstream(settings))
        except UpstreamConfigError as error:
            raise BootstrapError(str(error).removeprefix("acme-ra: ")) from None
        except SQLAlchemyError as error:
            raise BootstrapError(
                f"the database ({settings.effective_database_url.split('://')[0]}) is not usable; "
                f"run `acme-ra migrate` first ({type(error).__name__})"
            ) from None
    log.info(
        "bootstrap: upstream acme (no lab CA), frontend certificate %s",
        frontend,
        extra={"frontend_cert": str(settings.frontend_tls_paths[0])},
    )
    return BootstrapResult(ca_bundle=bundle, lab_ca_created=False, frontend_cert=frontend)


async def _frontend_cert_from_upstream(settings: Settings) -> str:
    from acme_ra.db.engine import Database
    from acme_ra_signer import frontend_tls
    from acme_ra_signer.upstream.failover import AcmeDriver

    db = Database(settings.effective_database_url, 2)
    try:
        driver = AcmeDriver.from_settings(settings, db)
        try:
            return await asyncio.wait_for(
                frontend_tls.ensure(settings, driver, at_bootstrap=True),
                frontend_tls.BOOTSTRAP_UPSTREAM_TIMEOUT_SECONDS,
            )
        except TimeoutError:
            cert_path, key_path = settings.frontend_tls_paths
            names = frontend_tls.frontend_names(settings.external_url)
            if frontend_tls.condition(cert_path, key_path, names) == "missing":
                frontend_tls.write_placeholder(cert_path, key_path, names)
                return "placeholder"
            return "failed"
        finally:
            await driver.close()
    finally:
        await db.dispose()


def frontend_names(external_url: str) -> list[str]:
    """The external URL's host, then the local names, without duplicates."""
    host = (urlsplit(external_url).hostname or "").lower()
    names = [host] if host else []
    return names + [name for name in LOCAL_NAMES if name not in names]


def ensure_frontend_cert(
    ca: labca.LabCA,
    cert_path: Path,
    key_path: Path,
    names: list[str],
    now: dt.datetime | None = None,
) -> str:
    """Issue the frontend's certificate and key unless a good one exists. Returns issued|kept."""
    now = now or dt.datetime.now(dt.UTC)
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with labca.exclusive_lock(cert_path.parent / f".{cert_path.name}.lock"):
        if _still_good(ca, cert_path, key_path, names, now):
            return "kept"
        key = ec.generate_private_key(ec.SECP256R1())
        identifiers = [{"type": identifier_type(name), "value": name} for name in names]
        leaf = ca.issue_leaf(key.public_key(), identifiers, FRONTEND_CERT_LIFETIME, now)
        # Key first: a certificate on disk always has its key next to it.
        labca.write_atomic(key_path, labca.private_key_pem(key), 0o600)
        labca.write_atomic(cert_path, ca.chain_pem(leaf).encode(), 0o644)
        return "issued"


def _still_good(
    ca: labca.LabCA, cert_path: Path, key_path: Path, names: list[str], now: dt.datetime
) -> bool:
    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        leaf.verify_directly_issued_by(ca.intermediate)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # noqa: BLE001 - missing, unreadable, foreign or malformed: issue anew
        return False
    if key.public_key() != leaf.public_key():
        return False
    present = {name.lower() for name in sans.get_values_for_type(x509.DNSName)}
    present |= {str(address) for address in sans.get_values_for_type(x509.IPAddress)}
    if any(_canonical(name) not in present for name in names):
        return False
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    return leaf.not_valid_after_utc - now > lifetime / 3



def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()
