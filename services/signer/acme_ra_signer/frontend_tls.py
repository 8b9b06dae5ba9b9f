"""The frontend's own TLS certificate from the upstream CA (``ACME_RA_UPSTREAM=acme`` without
``ACME_RA_TLS_CERT_FILE``).

``bootstrap`` obtains it once (for the external URL's host) and persists it under
``STATE_DIR/tls``; a certificate on disk that is still good is kept, never re-ordered at boot.
Start-up never waits long for the upstream: if it cannot be reached and there is no
certificate yet, a short-lived self-signed *placeholder* lets the frontend start, and the
signer replaces it as soon as the upstream answers. The signer renews the certificate when two
thirds of its lifetime have passed; the frontend notices the new files (their mtime) and
reloads. ``STATE_DIR/ca-bundle.pem`` gets the issuers the upstream sent (no private key of any
CA is ever on disk with this upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acme_ra.config import Settings
from acme_ra_signer import labca
from acme_ra_signer.upstream.base import IssueRequest, UpstreamError
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.upstream.journal import MemoryJournal

log = logging.getLogger("acme_ra_signer.frontend_tls")

CA_BUNDLE = "ca-bundle.pem"
# The placeholder's organisation (how it is recognised) and lifetime.
PLACEHOLDER_ORGANIZATION = "acme-ra placeholder (upstream CA not reached yet)"
PLACEHOLDER_LIFETIME = dt.timedelta(days=7)
# How long bootstrap waits for the upstream before falling back to the placeholder (seconds).
BOOTSTRAP_UPSTREAM_TIMEOUT_SECONDS = 60.0
# How often the signer looks at the certificate; how soon it retries after a failure (seconds).
RENEW_CHECK_SECONDS = 3600.0
RENEW_RETRY_SECONDS = 60.0
# The identifier of upstream orders for the frontend certificate (no acme-ra order behind them).
FRONTEND_ORDER_ID = "frontend-tls"

Condition = Literal["good", "renew", "placeholder", "missing"]


def frontend_names(external_url: str) -> list[str]:
    """The names a public CA can certify: the external URL's host only."""
    host = urlsplit(external_url).hostname
    return [host.lower()] if host else []


def condition(cert_path: Path, key_path: Path, names: list[str], now: dt.datetime | None = None) -> Condition:
    """What the certificate on disk needs: nothing, renewal, replacing a placeholder, or issuing."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # noqa: BLE001 - missing, unreadable or malformed: issue anew
        return "missing"
    if key.public_key() != leaf.public_key():
        return "missing"
    organizations = leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if any(a.value == PLACEHOLDER_ORGANIZATION for a in organizations):
        return "placeholder"
    present = {name.lower() for name in sans.get_values_for_type(x509.DNSName)}
    present |= {str(address) for address in sans.get_values_for_type(x509.IPAddress)}
    if any(name not in present for name in names):
        return "renew"
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    return "good" if leaf.not_valid_after_utc - now > lifetime / 3 else "renew"


async def ensure(settings: Settings, driver: AcmeDriver, *, at_bootstrap: bool) -> str:
    """Obtain the certificate unless a good one exists. Returns kept | issued | placeholder |
    busy (another process holds the lock) | failed (kept what was there). At bootstrap, wait
    for the lock, and write a placeholder when there is nothing and the upstream fails."""
    cert_path, key_path = settings.frontend_tls_paths
    names = frontend_names(settings.external_url)
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _try_lock(cert_path.parent / f".{cert_path.name}.lock", block=at_bootstrap) as locked:
        if not locked:
            return "busy"
        state = condition(cert_path, key_path, names)
        if state == "good":
            return "kept"
        try:
            await obtain(driver, cert_path, key_path, names, settings.state_dir / CA_BUNDLE)
        except (UpstreamError, TimeoutError) as error:
            log.warning("frontend certificate not obtained from the upstream: %s", error, extra={"was": state})
            if state == "missing" and at_bootstrap:
                write_placeholder(cert_path, key_path, names)
                return "placeholder"
            return "failed"
        return "issued"


async def obtain(driver: AcmeDriver, cert_path: Path, key_path: Path, names: list[str], bundle: Path) -> None:
    """Order a certificate for ``names`` from the default upstream and write key, chain, bundle."""
    key = ec.generate_private_key(ec.SECP256R1())
    identifiers = [{"type": identifier_type(name), "value": name} for name in names]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([labca.general_name(i) for i in identifiers]), critical=False)
        .sign(key, hashes.SHA256())
    )
    upstream = driver.select()
    request = IssueRequest(
        order_id=FRONTEND_ORDER_ID, csr_der=csr.public_bytes(serialization.Encoding.DER), identifiers=identifiers
    )
    chain = await upstream.issue(request, MemoryJournal(upstream.name))
    # Key first: a certificate on disk always has its key next to it.
    labca.write_atomic(key_path, labca.private_key_pem(key), 0o600)
    labca.write_atomic(cert_path, chain.chain_pem.encode(), 0o644)
    issuers = x509.load_pem_x509_certificates(chain.chain_pem.encode())[1:]
    if issuers:
        labca.write_atomic(bundle, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in issuers), 0o644)
    log.info(
        "frontend certificate issued by the upstream",
        extra={
            "upstream": upstream.name,
            "names": names,
            "serial": chain.serial_hex,
            "not_after": chain.not_after.isoformat(),
        },
    )


def write_placeholder(cert_path: Path, key_path: Path, names: list[str]) -> None:
    """A self-signed certificate so that the frontend can start; replaced as soon as possible."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, PLACEHOLDER_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, (names[0] if names else "acme-ra")[:64]),
        ]
    )
    identifiers = [{"type": identifier_type(n), "value": n} for n in names]
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + PLACEHOLDER_LIFETIME)
    )
    if identifiers:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([labca.general_name(i) for i in identifiers]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    labca.write_atomic(key_path, labca.private_key_pem(key), 0o600)
    labca.write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.warning("frontend uses a self-signed placeholder until the upstream CA answers", extra={"path": str(cert_path)})


async def renew_forever(settings: Settings, driver: AcmeDriver, stop: asyncio.Event) -> None:
    """The signer's background task: renew at two thirds of the lifetime, replace placeholders.
    Only a certificate that bootstrap put in this state dir is looked after: a signer whose
    state dir no frontend uses (its own pod, say) orders nothing."""
    cert_path, key_path = settings.frontend_tls_paths
    names = frontend_names(settings.external_url)
    while not stop.is_set():
        outcome = "absent"
        if condition(cert_path, key_path, names) != "missing":
            try:
                outcome = await ensure(settings, driver, at_bootstrap=False)
            except Exception:  # keep trying; the frontend keeps its current files
                log.exception("frontend certificate renewal failed")
                outcome = "failed"
        still = condition(cert_path, key_path, names)
        delay = RENEW_RETRY_SECONDS if outcome == "failed" or still in ("renew", "placeholder") else RENEW_CHECK_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


@contextlib.contextmanager
def _try_lock(path: Path, block: bool) -> Iterator[bool]:
    """An exclusive ``flock``; unless ``block``, yields False when another process holds it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def identifier_type(name: str) -> str:
    """An ACME identifier's type for a name of the frontend's certificate: "ip" or "dns"."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return "dns"
    return "ip"
