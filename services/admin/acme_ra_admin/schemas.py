"""What the admin API sends and accepts (and what ``acme-ra ... --json`` prints)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Account(BaseModel):
    id: str
    status: str
    contact: list[str]
    created_at: dt.datetime
    eab_kid: str | None
    orders: int = 0
    certificates: int = 0


class EabPolicy(BaseModel):
    allow: list[str] = Field(default_factory=list, description="identifier rules: name, .suffix or CIDR")
    deny: list[str] = Field(default_factory=list)
    wildcards: bool = True


class EabKey(BaseModel):
    kid: str
    label: str
    policy: EabPolicy | None
    profile: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    account_id: str | None
    status: Literal["unused", "bound", "revoked"]


class NewEabKey(EabKey):
    hmac_key: str = Field(description="base64url; shown once, never again")


class EabKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field("", max_length=200)
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    wildcards: bool = True
    profile: str | None = None


class Challenge(BaseModel):
    id: str
    type: str
    status: str
    validated: dt.datetime | None
    error: dict[str, Any] | None
    # Multi-perspective corroboration: each perspective's result and the quorum (validator mpic.py).
    validation_record: dict[str, Any] | None = None


class Authorization(BaseModel):
    id: str
    identifier: str
    wildcard: bool
    status: str
    expires: dt.datetime
    challenges: list[Challenge]


class UpstreamOrder(BaseModel):
    upstream: str
    state: str
    url: str | None
    orders_created: int
    error: dict[str, Any] | None
    updated_at: dt.datetime


class Order(BaseModel):
    id: str
    account_id: str
    provisioner: str
    status: str
    names: list[str]
    profile: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    expires: dt.datetime
    error: dict[str, Any] | None
    certificate_id: str | None
    trace_id: str | None
    trace_url: str | None


class OrderDetail(Order):
    authorizations: list[Authorization]
    upstream: UpstreamOrder | None


class Certificate(BaseModel):
    id: str
    order_id: str
    account_id: str
    serial: str
    names: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    created_at: dt.datetime
    status: Literal["valid", "expired", "revoked"]
    revoked_at: dt.datetime | None
    revocation_reason: int | None
    # The inventory: where it came from and under what (None when not known).
    upstream: str | None = None
    issuer: str | None = None
    profile: str | None = None
    eab_kid: str | None = None


class Inventory(BaseModel):
    now: dt.datetime
    # Unrevoked certificates expiring in each of the coming weeks (the first: the next 7 days).
    expiring_per_week: list[int]
    # Certificates issued on each of the last days, oldest first (the last: today, UTC).
    issued_per_day: list[int]
    # Expiring within 30 days, and no later certificate for the same names: soonest first.
    lapsing: list[Certificate]


class CertificateDetail(Certificate):
    chain_pem: str


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: int | str = Field(0, description="RFC 5280 reason code or name, e.g. 1 or keyCompromise")


class Revocation(BaseModel):
    outcome: Literal["revoked"]
    certificate: Certificate


class SignerStatus(BaseModel):
    url: str
    reachable: bool
    ready: bool
    failed: dict[str, str] = Field(default_factory=dict)
    # The upstreams the signer runs with, as its /upstreams describes them (no secret).
    upstreams: list[dict[str, Any]] = Field(default_factory=list, exclude=True)


class UpstreamAccount(BaseModel):
    upstream: str
    directory_url: str
    url: str | None
    eab_kid: str | None
    registered_at: dt.datetime | None
    registrations: int


class DnsUpdate(BaseModel):
    """Where an upstream's dns-01 TXT records are written (never the TSIG secret)."""

    kind: str = Field(description="rfc2136 or hook (a str: a newer signer may add a kind)")
    server: str | None = Field(None, description="rfc2136: the primary server, host:port")
    tsig_key_name: str | None = Field(None, description="rfc2136: the TSIG key's name")
    path: str | None = Field(None, description="hook: the command")


class UpstreamFailure(BaseModel):
    order_id: str
    type: str | None
    detail: str | None = Field(description="the problem, with the upstream's own text")
    at: dt.datetime


class UpstreamBreaker(BaseModel):
    """The signer's circuit breaker for an upstream (failover: an open one is skipped)."""

    state: str = Field(description="closed, half-open (one probe let through) or open (skipped)")
    consecutive_failures: int
    last_error: str | None = None
    retry_in_seconds: float | None = Field(None, description="open: when the next probe is let through")


class Upstream(BaseModel):
    name: str
    authz_strategy: str | None = Field(description="prevalidated, dns-01 or http-01; null: the signer did not say")
    dns_update: DnsUpdate | None
    validations_pending: int = Field(description="upstream orders whose authorizations are being proved now")
    dns_records: int = Field(description="dns-01 TXT records the journal holds for them")
    last_failure: UpstreamFailure | None
    breaker: UpstreamBreaker | None = Field(None, description="null: the signer did not say")


class UpstreamStatus(BaseModel):
    upstream: str
    signer: SignerStatus
    upstreams: list[Upstream] = Field(description="per upstream: strategy, validations pending, last failure")
    accounts: list[UpstreamAccount]
    upstream_orders: dict[str, int] = Field(description="upstream orders by state")
    orders: dict[str, int] = Field(description="acme-ra orders by status")


class Consumer(BaseModel):
    name: str
    pending: int = Field(description="jobs not yet delivered")
    ack_pending: int = Field(description="jobs delivered, not yet acknowledged")
    redelivered: int
    waiting: int = Field(description="pull requests waiting (idle workers)")


class QueueStatus(BaseModel):
    stream: str
    reachable: bool
    messages: int = 0
    consumers: list[Consumer] = Field(default_factory=list)
    error: str | None = None


class AdminToken(BaseModel):
    id: str
    label: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    scope: str = Field(description="operator (every operation) or read-only (reads only)")
    expires_at: dt.datetime | None = Field(description="refused after this; null: never expires")


class NewAdminToken(AdminToken):
    token: str = Field(description="shown once, never again")


class ResealReport(BaseModel):
    resealed: int = Field(description="secrets sealed again in today's format")
    current: int = Field(description="secrets already in today's format")


class AuditEntry(BaseModel):
    """One admin change (acme_ra.db.audit)."""

    id: str
    at: dt.datetime
    actor: str = Field(description="the admin token's label, or cli:<OS user> for acme-ra on the database")
    token_id: str | None = Field(description="the admin token's id; null for acme-ra on the database")
    client: str = Field(description="the client's address; local for acme-ra on the database")
    action: str = Field(description="e.g. eab_key.create, certificate.revoke, admin_token.revoke")
    subject: str = Field(description="the id of what changed")
    detail: dict[str, Any] | None


class ErrorBody(BaseModel):
    detail: str


class IdentifierPolicy(BaseModel):
    allow: list[str] = Field(description="ACME_RA_POLICY_ALLOW: identifier rules (name, .suffix or CIDR)")
    deny: list[str] = Field(description="ACME_RA_POLICY_DENY")
    wildcards: bool = Field(description="ACME_RA_POLICY_WILDCARDS")


class ClientNetworkRule(BaseModel):
    network: str
    allow: list[str] = Field(description="identifier rules its clients may request; empty: any the policy allows")
    deny: list[str]
    wildcards: bool
    origin: str = Field(description="ACME_RA_POLICY_CLIENT_NETWORKS or ACME_RA_CONFIG_FILE")


class ClientNetworks(BaseModel):
    restricted: bool | None = Field(description="false: every address may use the ACME API; null: unknown "
                                                "(the file does not load)")
    networks: list[ClientNetworkRule]
    config_file: str | None = Field(description="ACME_RA_CONFIG_FILE, reloaded by the frontends when it changes")
    error: str | None = Field(None, description="why the file does not load: the frontends keep the rules they "
                                                "loaded before")


class PolicyView(BaseModel):
    """The rules as the configuration says now (the admin reads the same settings and file as the
    frontends; they apply a change of the file within seconds, unless it does not load)."""

    identifiers: IdentifierPolicy
    client_networks: ClientNetworks
