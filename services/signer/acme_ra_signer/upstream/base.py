"""The upstream CA interface: what the signer asks of any back end (lab CA, ACME+EAB, ...).

Drivers report outcomes as typed exceptions, never as ACME problem documents:
``UpstreamRejected`` carries a problem *as data* (the order becomes invalid with it);
``UpstreamUnavailable`` means "try again later" (the job is nak'ed and redelivered).

A slow, stateful upstream (ACME: new order, finalize, poll — often 30 s or more) fits as is:
``issue`` may take minutes (the worker keeps the job alive meanwhile), and ``order_id`` is
stable across redeliveries, so a driver can key its upstream state by it and resume an upstream
order after a restart instead of issuing twice.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509

from acme_ra.db.models import UpstreamOrderState

if TYPE_CHECKING:
    from acme_ra_signer.upstream.journal import Entry, Journal


@dataclass(frozen=True)
class IssueRequest:
    """One finalized order, as the upstream needs it."""

    order_id: str
    csr_der: bytes
    # [{"type": "dns" | "ip", "value": "..."}, ...] in the order's order; the certificate's SANs.
    identifiers: list[dict[str, str]]
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    # Which upstream serves the order (several upstreams: by profile, then provisioner).
    provisioner: str | None = None
    profile: str | None = None


@dataclass(frozen=True)
class IssuedChain:
    """What the upstream returned: PEM CERTIFICATE blocks only, leaf first, then its issuers."""

    chain_pem: str
    serial_hex: str  # lowercase hex, format(serial, "x")
    not_before: dt.datetime  # timezone-aware UTC
    not_after: dt.datetime  # timezone-aware UTC
    # Other chains for the same leaf (ACME ``Link: rel="alternate"``), each leaf first.
    alternate_chains_pem: tuple[str, ...] = ()
    # The configured upstream that issued it (set by the driver that routes orders).
    upstream: str = ""


@dataclass(frozen=True)
class RenewalInfo:
    """An upstream's suggested renewal window for a certificate (RFC 9773 ``suggestedWindow``,
    timezone-aware UTC), its ``explanationURL``, and when to ask again (``Retry-After``, seconds)."""

    start: dt.datetime
    end: dt.datetime
    explanation_url: str | None = None
    retry_after: float | None = None


class UpstreamError(Exception):
    """Base of the typed upstream outcomes."""


class UpstreamRejected(UpstreamError):
    """Permanent: retrying cannot help. ``problem`` is a problem as data (short ACME type),
    e.g. ``{"type": "badCSR", "detail": "..."}``; the order becomes invalid with it."""

    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(f"{problem.get('type', '?')}: {problem.get('detail', '')}")
        self.problem = problem


def csr_and_refusal(request: IssueRequest, entry: Entry) -> x509.CertificateSigningRequest:
    """What a back end without orders (vault, command) checks first: the CSR parses, and the
    journal ``entry`` does not already hold the upstream's refusal (raised again if it does)."""
    try:
        csr = x509.load_der_x509_csr(request.csr_der)
    except ValueError:
        raise UpstreamRejected({"type": "badCSR", "detail": "the CSR is not valid DER"}) from None
    if entry.state == UpstreamOrderState.invalid.value:
        raise UpstreamRejected(entry.error or {"type": "serverInternal", "detail": "the upstream refused"})
    return csr


def said_by(upstream: str, detail: str) -> str:
    """A detail as the client reads it in the order's ``error``: which upstream said it first
    (``upstream "certinext": ...``), then the upstream's own text or what went wrong with it.
    Idempotent: a detail already said by ``upstream`` is returned as is."""
    prefix = f'upstream "{upstream}": '
    return detail if detail.startswith(prefix) else prefix + detail


def upstream_problem(upstream: str, type_: str, detail: str) -> dict[str, Any]:
    """A problem as data for an order that ``upstream`` failed (see ``said_by``)."""
    return {"type": type_, "detail": said_by(upstream, detail)}


class UpstreamUnavailable(UpstreamError):
    """Transient: the upstream is down, slow or rate limiting; the job will be retried."""


class RequestNotSent(UpstreamUnavailable):
    """Unavailable, and the request certainly never reached the upstream (no connection could
    be made, or the nonce it needed could not be fetched): nothing it asked for can have been
    done. Any other failure of a sent request leaves open whether the upstream acted on it."""


def refusal(upstream: str, text: str, identifiers: list[dict[str, str]]) -> dict[str, Any]:
    """An upstream's refusal (its own words) as the order's problem, naming the upstream:
    ``rejectedIdentifier`` when the words name one of the order's identifiers, else
    ``unauthorized`` (the CA does not authorize this issuance)."""
    said = " ".join(text.split())[:500] or "no reason given"
    names = {i.get("value", "").lower() for i in identifiers} - {""}
    words = {word.strip("'\"`,;:()[]<>").lower() for word in said.split()}
    kind = "rejectedIdentifier" if names & words else "unauthorized"
    return {"type": kind, "detail": said_by(upstream, f"refused: {said}")}


class UpstreamDriver(abc.ABC):
    """A back end that signs (or has signed) certificates for the RA."""

    # The ACME_RA_UPSTREAM value that selects this driver.
    name: str = ""

    @abc.abstractmethod
    async def issue(self, request: IssueRequest) -> IssuedChain:
        """Have the upstream sign ``request.csr_der`` for exactly ``request.identifiers``."""

    @abc.abstractmethod
    async def revoke(self, cert_der: bytes, reason: int, order_id: str | None = None) -> None:
        """Revoke a certificate this upstream issued (RFC 5280 reason code). ``order_id``, the
        acme-ra order it was issued for, tells a driver with several upstreams which one.
        A certificate the upstream already holds as revoked counts as revoked."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Readiness: raise (``UpstreamUnavailable``) when the upstream cannot be used now."""

    def describe(self) -> list[dict[str, Any]]:
        """Each upstream as operators may see it (name, authz_strategy, dns_update); no secret."""
        return []

    async def renewal_info(self, upstream: str, leaf: x509.Certificate) -> RenewalInfo | None:
        """The renewal window the named upstream suggests for a certificate it issued (RFC 9773),
        or None when it offers none (or is not configured any more)."""
        return None

    def offers_renewal_info(self, upstream: str) -> bool:
        """False when the named upstream surely has no renewal window to read (no renewalInfo in
        its directory as last read, or a kind of upstream without one): nothing to relay, so the
        relay skips its read after each issuance."""
        return False

    async def close(self) -> None:
        """Release connections and background work; called once at shutdown."""
        return


class NamedUpstream(abc.ABC):
    """One configured upstream of any ``type`` (acme, vault, command, lab): what the driver that
    routes orders (``AcmeDriver``; an ordered failover list later) asks of each.

    ``issue`` also *resumes*: the journal holds what an earlier attempt recorded (its record is
    written before any request that may issue), and the upstream reads it first, so that one
    acme-ra order gets at most one certificate from it, whatever crashed in between.
    """

    name: str
    type: str

    @abc.abstractmethod
    async def issue(self, request: IssueRequest, journal: Journal) -> IssuedChain:
        """Sign ``request`` (or finish what ``journal`` says was started); record each step."""

    @abc.abstractmethod
    async def revoke(self, cert_der: bytes, reason: int) -> None:
        """Revoke a certificate this upstream issued; already revoked counts as revoked."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Health: raise ``UpstreamUnavailable`` when the upstream cannot be used now."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The upstream as operators may see it (name, type, ...); never a secret."""

    async def renewal_info(self, leaf: x509.Certificate) -> RenewalInfo | None:
        """The upstream's renewal window for a certificate it issued (RFC 9773), or None when
        it offers none; raises ``UpstreamUnavailable`` when it offers one but did not answer."""
        return None

    def offers_renewal_info(self) -> bool:
        """Whether ``renewal_info`` may find a window (see ``UpstreamDriver.offers_renewal_info``)."""
        return False

    def may_move(self, entry: Entry) -> bool:
        """Whether an order recorded as ``entry`` may go to another upstream without risking a
        second certificate: nothing that could issue was ever sent here."""
        return entry.finalized_at is None

    async def close(self) -> None:
        return
