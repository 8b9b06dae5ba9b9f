"""Settings of challenge validation: ports, resolvers, DNSSEC, address policy, attempts, CAA and
multi-perspective corroboration (the validator; docs/validation.md, docs/perspectives.md)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from acme_ra.settings.section import SettingsSection, parse_host_port


class ValidationSettings(SettingsSection):
    """How the validators check challenges and CAA."""

    # ACME_RA_VALIDATION_HTTP_PORT / _TLS_PORT: where the validator connects (80/443 in production).
    validation_http_port: int = Field(80, gt=0, lt=65536)
    validation_tls_port: int = Field(443, gt=0, lt=65536)
    # ACME_RA_DNS_RESOLVERS: comma list of host[:port]; empty = the system's resolvers.
    dns_resolvers: str = ""
    # ACME_RA_DNSSEC: "off", "validate" (the TXT and CAA lookups of validation must be DNSSEC-valid;
    # bogus answers refuse, provably unsigned zones pass) or "require-signed" (unsigned refused
    # too). The resolvers must validate: checked at start-up and every 5 minutes (docs/dnssec.md).
    # Default "off" (make dev, labs); production: "validate".
    dnssec: Literal["off", "validate", "require-signed"] = "off"
    # ACME_RA_DNSSEC_TRUST_ANCHORS_FILE: DS or DNSKEY records (zone-file syntax) the resolvers'
    # DNSSEC is checked against (private zones, tests); unset = the IANA root's KSKs 20326, 38696.
    dnssec_trust_anchors_file: Path | None = None
    # ACME_RA_VALIDATION_ALLOW_NETWORKS: comma list of CIDRs the validator may connect to although
    # they are in its default deny list (loopback, private, link-local, ...); default "" (none).
    # Labs (make dev, tests) set 127.0.0.0/8,::1/128: their clients answer on loopback.
    validation_allow_networks: str = ""
    # ACME_RA_VALIDATION_DENY_NETWORKS: comma list of CIDRs the validator never connects to, added
    # to the default deny list and winning over the allow list; default "".
    validation_deny_networks: str = ""
    # ACME_RA_VALIDATION_TIMEOUT_SECONDS: the most one validation may take, every address, redirect,
    # byte and DNS lookup included (a server dribbling a byte at a time meets it); default 45.
    validation_timeout_seconds: float = Field(45.0, gt=0, le=300)
    # ACME_RA_VALIDATION_MAX_ATTEMPTS: checks of one challenge that may fail or crash a validator
    # (counted on redeliveries); the next delivery ends the challenge invalid unchecked; default 3.
    validation_max_attempts: int = Field(3, ge=1, le=19)  # below bus.MAX_DELIVER
    # ACME_RA_RECONCILE_INTERVAL_SECONDS: how often each frontend's reconciler looks for challenges
    # and orders stuck in processing (seconds); default 15.
    reconcile_interval_seconds: float = Field(15.0, gt=0, le=3600)
    # ACME_RA_RECONCILE_MAX_REPUBLICATIONS: times the frontends' reconciler publishes again the job
    # of a challenge or order stuck in processing; then it ends it invalid; default 10.
    reconcile_max_republications: int = Field(10, ge=1, le=1000)
    # Multi-perspective corroboration (MPIC, CA/B Forum BR 3.2.2.9; docs/perspectives.md).
    # ACME_RA_VALIDATOR_ROLE: "primary" (takes validation jobs, needs the database) or "remote" (a
    # network perspective answering check requests over NATS, no database: run it in another site).
    validator_role: Literal["primary", "remote"] = "primary"
    # ACME_RA_VALIDATOR_PERSPECTIVE: this validator's perspective name (letters, digits, '-', '_');
    # required when remote; a primary's names its own result in validation records ("primary").
    validator_perspective: str = ""
    # ACME_RA_VALIDATOR_REGION: the perspective's regional internet registry (arin, ripe, apnic,
    # lacnic, afrinic); required when remote.
    validator_region: str = ""
    # ACME_RA_MPIC_REMOTE_PERSPECTIVES: distinct remote perspectives a primary asks for every check
    # (and CAA), in parallel; 0 = off. The BRs want 3 (since 2026-03-15), 4 (2026-06-15), 5 (2026-12-15).
    mpic_remote_perspectives: int = Field(0, ge=0, le=32)
    # ACME_RA_MPIC_QUORUM: remote perspectives that must pass; unset = the BR table (2-5 remote:
    # all but 1; 6 or more: all but 2).
    mpic_quorum: int | None = Field(None, ge=1, le=32)
    # ACME_RA_MPIC_REGIONS_MIN: distinct regions the passing remote perspectives must span; unset =
    # 2 under the BR table (with 2 or more remote perspectives), else 1.
    mpic_regions_min: int | None = Field(None, ge=1, le=5)
    # ACME_RA_MPIC_DEADLINE_SECONDS: how long a check waits for enough live perspectives (asking
    # again every few seconds; the challenge stays processing) before it ends invalid; keep it
    # below the frontends' reconciler deadline (60 s).
    mpic_deadline_seconds: float = Field(40.0, gt=0, le=600)
    # ACME_RA_CAA_IDENTITIES: comma list of CA domain names CAA `issue`/`issuewild` records must
    # name (in RA mode the upstream CA's, e.g. sectigo.com,incommon.org); default "" = no CAA check.
    caa_identities: str = ""

    @field_validator("dns_resolvers")
    @classmethod
    def _check_resolvers(cls, value: str) -> str:
        for item in filter(None, (v.strip() for v in value.split(","))):
            host, _ = parse_host_port(item, 53)
            ipaddress.ip_address(host)
        return value

    @field_validator("validation_allow_networks", "validation_deny_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        for item in filter(None, (v.strip() for v in value.split(","))):
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("dnssec_trust_anchors_file")
    @classmethod
    def _check_trust_anchors_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _check_perspectives(self) -> Self:
        from acme_ra.perspectives import REGIONS

        name = self.validator_perspective
        if name and not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError("ACME_RA_VALIDATOR_PERSPECTIVE: letters, digits, '-' and '_' only")
        if self.validator_region and self.validator_region not in REGIONS:
            raise ValueError(f"ACME_RA_VALIDATOR_REGION must be one of {', '.join(REGIONS)}")
        if self.validator_role == "remote" and not (name and self.validator_region):
            raise ValueError("ACME_RA_VALIDATOR_ROLE=remote needs ACME_RA_VALIDATOR_PERSPECTIVE and _REGION")
        if self.mpic_quorum is not None and self.mpic_quorum > self.mpic_remote_perspectives:
            raise ValueError("ACME_RA_MPIC_QUORUM is more than ACME_RA_MPIC_REMOTE_PERSPECTIVES")
        return self

    @property
    def resolver_addresses(self) -> list[tuple[str, int]]:
        return [parse_host_port(v.strip(), 53) for v in self.dns_resolvers.split(",") if v.strip()]

    @property
    def caa_identity_list(self) -> list[str]:
        return [v.strip().lower() for v in self.caa_identities.split(",") if v.strip()]

    @property
    def mpic_required_passes(self) -> int:
        """Remote perspectives that must pass: ACME_RA_MPIC_QUORUM, else the BR table."""
        count = self.mpic_remote_perspectives
        if self.mpic_quorum is not None:
            return self.mpic_quorum
        if count <= 1:
            return count
        return count - (1 if count <= 5 else 2)

    @property
    def mpic_min_regions(self) -> int:
        """Distinct regions the passing remote perspectives must span."""
        if self.mpic_regions_min is not None:
            return self.mpic_regions_min
        return 2 if self.mpic_quorum is None and self.mpic_remote_perspectives >= 2 else 1
