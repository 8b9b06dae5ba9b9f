"""The ``lab`` upstream: the in-process lab CA signs (dev, labs and tests ONLY)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from pydantic import BaseModel, ConfigDict

from acme_ra.config import Settings
from acme_ra.db.models import UpstreamOrderState, utcnow
from acme_ra_signer import labca
from acme_ra_signer.upstream.base import (
    IssuedChain,
    IssueRequest,
    NamedUpstream,
    UpstreamDriver,
    UpstreamRejected,
    UpstreamUnavailable,
)
from acme_ra_signer.upstream.journal import Journal

log = logging.getLogger("acme_ra_signer.upstream.lab")


class LabDriver(UpstreamDriver):
    """Signs with the lab CA under ``ACME_RA_STATE_DIR/lab-ca``; loads (or creates) it once.

    Requested notBefore/notAfter are not honoured: every certificate gets the lab profile's
    validity (``ACME_RA_CERT_LIFETIME_DAYS``); the frontend decides whether to accept such orders.
    """

    name = "lab"

    def __init__(self, ca: labca.LabCA, lifetime: dt.timedelta) -> None:
        self.ca = ca
        self.lifetime = lifetime

    @classmethod
    def from_settings(cls, settings: Settings) -> LabDriver:
        ca, created = labca.load_or_create(settings.lab_ca_dir)
        log.warning(
            "lab CA: NOT FOR PRODUCTION - certificates are signed by a throw-away CA in %s (%s); "
            "set ACME_RA_UPSTREAM to a real upstream CA for anything but development and tests",
            settings.lab_ca_dir,
            "created now" if created else "loaded",
            extra={"root": ca.root.subject.rfc4514_string()},
        )
        return cls(ca, dt.timedelta(days=settings.cert_lifetime_days))

    async def issue(self, request: IssueRequest) -> IssuedChain:
        try:
            csr = x509.load_der_x509_csr(request.csr_der)
        except ValueError:
            raise UpstreamRejected({"type": "badCSR", "detail": "the CSR is not valid DER"}) from None
        if not csr.is_signature_valid:
            raise UpstreamRejected({"type": "badCSR", "detail": "the CSR's signature does not verify"})
        try:
            public_key = csr.public_key()
        except ValueError:
            raise UpstreamRejected({"type": "badPublicKey", "detail": "the CSR's key cannot be read"}) from None
        try:
            leaf = self.ca.issue_leaf(public_key, request.identifiers, self.lifetime)
        except labca.BadPublicKey as error:
            raise UpstreamRejected({"type": "badPublicKey", "detail": str(error)}) from None
        except labca.BadIdentifier as error:
            raise UpstreamRejected({"type": "rejectedIdentifier", "detail": str(error)}) from None
        return IssuedChain(
            chain_pem=self.ca.chain_pem(leaf),
            serial_hex=format(leaf.serial_number, "x"),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )

    async def revoke(self, cert_der: bytes, reason: int, order_id: str | None = None) -> None:
        """The lab CA publishes no CRL or OCSP: revocation is only checked and logged."""
        try:
            cert = x509.load_der_x509_certificate(cert_der)
            cert.verify_directly_issued_by(self.ca.intermediate)
        except Exception:  # noqa: BLE001 - any failure means "not ours"
            raise UpstreamRejected(
                {"type": "unauthorized", "detail": "the certificate was not issued by this CA"}
            ) from None
        log.info(
            "lab CA: certificate revoked (no CRL/OCSP is published)",
            extra={"serial": format(cert.serial_number, "x"), "reason": reason},
        )

    async def check(self) -> None:
        if dt.datetime.now(dt.UTC) >= self.ca.intermediate.not_valid_after_utc:
            raise UpstreamUnavailable("the lab CA's intermediate has expired")


# ``type: lab`` in ACME_RA_CONFIG_FILE: the lab CA as one named upstream among others (labs and
# tests of routing; never production). It takes no keys: the lab CA lives in ACME_RA_STATE_DIR.


@dataclass(frozen=True)
class LabConfig:
    name: str
    origin: str
    ca_dir: Path
    lifetime_days: int

    type = "lab"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "authz_strategy": None, "dns_update": None}

    def build(self, *, http_timeout: float, proxy: str | None) -> LabUpstream:
        ca, _ = labca.load_or_create(self.ca_dir)
        return LabUpstream(self, LabDriver(ca, dt.timedelta(days=self.lifetime_days)))


class _FileLab(BaseModel):
    model_config = ConfigDict(extra="forbid")


def from_file(settings: Settings, name: str, fields: dict[str, Any], origin: str) -> LabConfig:
    from acme_ra_signer.upstream.config_errors import validated

    validated(_FileLab, fields, origin)
    return LabConfig(name, origin, settings.lab_ca_dir, settings.cert_lifetime_days)


class LabUpstream(NamedUpstream):
    """The lab CA signs at once: the journal only records the outcome (and thus the upstream
    that revokes the certificate later)."""

    type = "lab"

    def __init__(self, config: LabConfig, driver: LabDriver) -> None:
        self.config = config
        self.name = config.name
        self.driver = driver

    def describe(self) -> dict[str, Any]:
        return self.config.describe()

    async def issue(self, request: IssueRequest, journal: Journal) -> IssuedChain:
        try:
            chain = await self.driver.issue(request)
        except UpstreamRejected as rejected:
            await journal.finish(state=UpstreamOrderState.invalid.value, error=rejected.problem)
            raise
        await journal.finish(state=UpstreamOrderState.valid.value, finalized_at=utcnow())
        return chain

    async def revoke(self, cert_der: bytes, reason: int) -> None:
        await self.driver.revoke(cert_der, reason)

    async def check(self) -> None:
        await self.driver.check()
