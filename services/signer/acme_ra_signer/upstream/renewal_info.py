"""An ACME upstream's renewal information (RFC 9773): the window it suggests for a certificate
it issued, read with an unauthenticated GET of ``<renewalInfo>/<certID>``."""

from __future__ import annotations

import datetime as dt
import re

from cryptography import x509

from acme_ra.db.lifecycle import ari_cert_id
from acme_ra_signer.upstream.acme_client import AcmeClient, AcmeProblem, retry_after_seconds
from acme_ra_signer.upstream.base import RenewalInfo, UpstreamUnavailable, said_by


async def fetch(client: AcmeClient, leaf: x509.Certificate, upstream: str) -> RenewalInfo | None:
    """The upstream's window for ``leaf``; None when its directory has no ``renewalInfo`` or the
    certificate has no authority key identifier (no certID)."""
    directory = await client.directory()
    try:
        base = str(directory["renewalInfo"])
    except (KeyError, AttributeError):
        return None
    cert_id = ari_cert_id(leaf)
    if cert_id is None:
        return None
    try:
        response = await client.get(f"{base.rstrip('/')}/{cert_id}")
    except AcmeProblem as problem:
        raise UpstreamUnavailable(said_by(upstream, f"renewalInfo: {problem}")) from None
    try:
        body = response.json()
        window = body["suggestedWindow"]
        start, end = _instant(window["start"]), _instant(window["end"])
        explanation = body.get("explanationURL")
    except (ValueError, KeyError, TypeError) as error:
        raise UpstreamUnavailable(said_by(upstream, f"renewalInfo: not an RFC 9773 answer: {error}")) from None
    if end <= start:
        raise UpstreamUnavailable(said_by(upstream, "renewalInfo: the window ends before it starts"))
    return RenewalInfo(
        start=start,
        end=end,
        explanation_url=explanation if isinstance(explanation, str) and explanation else None,
        retry_after=retry_after_seconds(response),
    )


def _instant(value: object) -> dt.datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an RFC 3339 timestamp, got {value!r}")
    # Fractions finer than microseconds (Go servers write nanoseconds) are cut to six digits.
    parsed = dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return parsed.astimezone(dt.UTC)
