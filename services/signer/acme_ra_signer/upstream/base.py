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
from typing import Any


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


class UpstreamError(Exception):
    """Base of the typed upstream outcomes."""


class UpstreamRejected(UpstreamError):
    """Permanent: retrying cannot help. ``problem`` is a problem as data (short ACME type),
    e.g. ``{"type": "badCSR", "detail": "..."}``; the order becomes invalid with it."""

    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(f"{problem.get('type', '?')}: {problem.get('detail', '')}")
        self.problem = problem


class UpstreamUnavailable(UpstreamError):
    """Transient: the upstream is down, slow or rate limiting; the job will be retried."""


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

    async def close(self) -> None:
        """Release connections and background work; called once at shutdown."""
        return
