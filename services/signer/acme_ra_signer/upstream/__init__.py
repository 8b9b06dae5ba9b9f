"""Upstream CA drivers and the registry that picks one by ``ACME_RA_UPSTREAM``."""

from __future__ import annotations

from collections.abc import Callable

from acme_ra.config import Settings
from acme_ra.db.engine import Database
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


def _lab(settings: Settings, db: Database | None) -> UpstreamDriver:
    from acme_ra_signer.upstream.lab import LabDriver

    return LabDriver.from_settings(settings)


def _acme(settings: Settings, db: Database | None) -> UpstreamDriver:
    from acme_ra_signer.upstream.failover import AcmeDriver

    if db is None:
        raise ValueError("the acme upstream keeps its account and orders in the database")
    return AcmeDriver.from_settings(settings, db)


# ACME_RA_UPSTREAM value -> factory.
DRIVERS: dict[str, Callable[[Settings, Database | None], UpstreamDriver]] = {
    "lab": _lab,
    "acme": _acme,
}


def make_driver(settings: Settings, db: Database | None = None) -> UpstreamDriver:
    """The driver ``settings.upstream`` names, ready to use (the lab CA is loaded or created;
    the acme driver's configuration is checked, raising ``UpstreamConfigError``)."""
    try:
        factory = DRIVERS[settings.upstream]
    except KeyError:
        raise ValueError(f"unknown upstream {settings.upstream!r}; known: {', '.join(DRIVERS)}") from None
    return factory(settings, db)
