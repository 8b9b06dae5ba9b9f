"""ACME Renewal Information (RFC 9773): an unauthenticated GET of a certificate's renewal window.

The window served, first that applies: a revoked certificate's (in the past: renew now); the
one stored for it (``renewal_windows``: an operator's ``acme-ra certs renew-early``, in the
past, or the window its upstream CA suggests, relayed by the signer, with its
``explanationURL``); else the one computed here (``suggested_window``).
"""

from __future__ import annotations

import datetime as dt
import time

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.models import Certificate, RenewalWindow
from acme_ra.protocol.jws import b64url_decode
from acme_ra.protocol.problems import Problem, malformed
from acme_ra_frontend.context import resolve_provisioner
from acme_ra_frontend.render import json_response, timestamp
from acme_ra_frontend.repo import certificates as repo_certificates

# How long clients should wait before asking again (RFC 9773 §4.3; Boulder: 6 h): the default
# of ACME_RA_ARI_RETRY_AFTER_SECONDS.
RETRY_AFTER_SECONDS = 6 * 3600
# How often, at most, a frontend re-reads the issuers it knows when a certID names an issuer it
# has not seen (seconds), and how many recent certificates that read looks at.
ISSUER_REFRESH_SECONDS = 300
ISSUER_SAMPLE = 1000


def parse_cert_id(cert_id: str) -> tuple[bytes, bytes]:
    """certID = base64url(AKI keyIdentifier) "." base64url(serial DER content), no padding."""
    aki_b64, dot, serial_b64 = cert_id.partition(".")
    if not dot or not aki_b64 or not serial_b64 or "." in serial_b64:
        raise malformed("certID must be base64url(AKI) '.' base64url(serial)")
    aki, serial = b64url_decode(aki_b64, "certID key identifier"), b64url_decode(serial_b64, "certID serial")
    if not aki or not serial or (len(serial) > 1 and serial[0] == 0 and serial[1] < 0x80):
        raise malformed("certID serial is not a DER INTEGER content")
    return aki, serial


def suggested_window(cert: Certificate) -> tuple[dt.datetime, dt.datetime]:
    if cert.revoked_at is not None:  # renew now: a window already in the past
        return cert.revoked_at - dt.timedelta(hours=1), cert.revoked_at
    lifetime = cert.not_after - cert.not_before
    if lifetime < dt.timedelta(days=10):
        center = cert.not_before + lifetime / 2
    else:
        center = cert.not_before + lifetime * 2 / 3
    spread = max(lifetime / 50, dt.timedelta(minutes=1))
    return center - spread, center + spread


def served_window(cert: Certificate, stored: RenewalWindow | None) -> dict[str, object]:
    """The renewalInfo body: ``suggestedWindow`` and, when known, ``explanationURL``."""
    body: dict[str, object] = {}
    if cert.revoked_at is None and stored is not None and stored.start is not None and stored.end is not None:
        start, end = stored.start, stored.end
        if stored.explanation_url:
            body["explanationURL"] = stored.explanation_url
    else:
        start, end = suggested_window(cert)
    body["suggestedWindow"] = {"start": timestamp(start), "end": timestamp(end)}
    return body


class KnownIssuers:
    """The issuers' key identifiers (the first half of certIDs) this frontend has seen.

    A certID naming an unknown issuer is malformed (400); an unknown serial of a known issuer is
    not found (404). Learnt from every certificate found, and re-read from the most recent
    certificates at most every ISSUER_REFRESH_SECONDS, so random certIDs cost no scan each.
    """

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.read_at = float("-inf")

    async def knows(self, session: AsyncSession, aki: str) -> bool:
        if aki in self.keys or time.monotonic() - self.read_at < ISSUER_REFRESH_SECONDS:
            return aki in self.keys
        self.read_at = time.monotonic()
        self.keys.update(v.partition(".")[0] for v in await repo_certificates.recent_ari_ids(session, ISSUER_SAMPLE))
        return aki in self.keys


def known_issuers(request: Request) -> KnownIssuers:
    issuers: KnownIssuers | None = getattr(request.app.state, "known_issuers", None)
    if issuers is None:
        issuers = request.app.state.known_issuers = KnownIssuers()
    return issuers


async def renewal_info(request: Request) -> Response:
    state, _urls = resolve_provisioner(request)
    cert_id = request.path_params.get("cert_id", "")
    if not cert_id:
        raise malformed("renewalInfo needs a certID: GET <renewalInfo>/<certID>")
    parse_cert_id(cert_id)
    aki = cert_id.partition(".")[0]
    issuers = known_issuers(request)
    async with state.db.sessions() as session:
        cert = await repo_certificates.by_ari_id(session, cert_id)
        if cert is None and not await issuers.knows(session, aki):
            raise malformed("the certID's key identifier names no issuer of this server")
        stored = None if cert is None else await repo_certificates.renewal_window(session, cert.id)
    if cert is None:
        raise Problem("malformed", "no certificate with this certID was issued here", 404)
    issuers.keys.add(aki)
    retry_after = state.settings.ari_retry_after_seconds
    return json_response(
        served_window(cert, stored),
        headers={"Retry-After": str(retry_after), "Cache-Control": f"public, max-age={min(retry_after, 3600)}"},
    )
