"""The ``lab`` upstream: the in-process lab CA signs (dev, labs and tests ONLY)."""

from __future__ import annotations

import datetime as dt
import logging

from cryptography import x509

from acme_ra.config import Settings
from acme_ra_signer import labca
from acme_ra_signer.upstream.base import (
    IssuedChain,
    IssueRequest,
    UpstreamDriver,
    UpstreamRejected,
    UpstreamUnavailable,
)

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
