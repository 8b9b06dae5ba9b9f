"""Upstream CA drivers and the registry that picks one by ``ACME_RA_UPSTREAM``."""

from __future__ import annotations

from collections.abc import Callable

from acme_ra.config import Settings
from acme_ra_signer.upstream.base import (
    IssuedChain,
    IssueRequest,
    UpstreamDriver,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)

__all__ = [
    "DRIVERS",
    "IssueRequest",
    "IssuedChain",
    "UpstreamDriver",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamUnavailable",
    "make_driver",
]


def _lab(settings: Settings) -> UpstreamDriver:
    from acme_ra_signer.upstream.lab import LabDriver

    return LabDriver.from_settings(settings)


# ACME_RA_UPSTREAM value -> factory. A new back end (e.g. "acme") adds one entry here.
DRIVERS: dict[str, Callable[[Settings], UpstreamDriver]] = {
    "lab": _lab,
}


def make_driver(settings: Settings) -> UpstreamDriver:
    """The driver ``settings.upstream`` names, ready to use (the lab CA is loaded or created)."""
    try:
        factory = DRIVERS[settings.upstream]
    except KeyError:
        raise ValueError(f"unknown upstream {settings.upstream!r}; known: {', '.join(DRIVERS)}") from None
    return factory(settings)
