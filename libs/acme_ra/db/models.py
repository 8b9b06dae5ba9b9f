"""The one schema shared by all services (SQLAlchemy 2 declarative models).

Alembic migrations in ``migrations/`` are the only way this schema changes in a database.
Identifiers are random, unpredictable base64url strings (RFC 8555 §10.5).
"""

from __future__ import annotations

import datetime as dt
import enum
import secrets
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id() -> str:
    """128 random bits, base64url: resource ids and challenge tokens. Never starts with '-' or
    '_', so an id is never mistaken for a command-line option."""
    while True:
        value = secrets.token_urlsafe(16)
        if value[0] not in "-_":
            return value


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stored as naive UTC on every backend, always returned timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


class AccountStatus(enum.StrEnum):
    valid = "valid"
    deactivated = "deactivated"
    revoked = "revoked"


class OrderStatus(enum.StrEnum):
    pending = "pending"
    ready = "ready"
    processing = "processing"
    valid = "valid"
    invalid = "invalid"


class AuthzStatus(enum.StrEnum):
    pending = "pending"
    valid = "valid"
    invalid = "invalid"
    deactivated = "deactivated"
    expired = "expired"
    revoked = "revoked"


class ChallengeStatus(enum.StrEnum):
    pending = "pending"
    processing = "processing"
    valid = "valid"
    invalid = "invalid"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class ServerKey(Base):
    """Keys shared by every replica, created once (e.g. the nonce HMAC key)."""

    __tablename__ = "server_keys"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class RedeemedNonce(Base):
    """A nonce that has been used once; the primary key makes a second use fail."""

    __tablename__ = "redeemed_nonces"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    key_thumbprint: Mapped[str] = mapped_column(String(64), unique=True)
    jwk: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=AccountStatus.valid.value)
    contact: Mapped[list[Any]] = mapped_column(default=list)
    tos_agreed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The terms of service (ACME_RA_TERMS_OF_SERVICE_URL) the account last agreed to; None: agreed
    # before schema 0006 recorded it (taken as the terms in force when the account is next seen).
    tos_agreed_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # The External Account Binding key this account registered with, if any.
    eab_kid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class EabKey(Base):
    """An External Account Binding key for acme-ra's own clients (`acme-ra eab create`)."""

    __tablename__ = "eab_keys"
    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The HMAC key, sealed (acme_ra.sealing) with purpose "eab:<kid>".
    hmac_key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    label: Mapped[str] = mapped_column(String(200), default="")
    # Identifier policy for accounts bound to this key: {"allow": [...], "deny": [...]}.
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The ACME profile orders of bound accounts get by default.
    profile: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]
    # The account that used this key; a key binds one account only.
    account_id: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    provisioner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.pending.value)
    expires: Mapped[dt.datetime]
    # [{"type": "dns", "value": "example.org"}, ...] in the order the client sent them (deduplicated).
    identifiers: Mapped[list[Any]]
    not_before: Mapped[dt.datetime | None]
    not_after: Mapped[dt.datetime | None]
    # A problem as data: {"type": "<short type>", "detail": "...", "subproblems"?: [...]}.
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    csr: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    certificate_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # W3C traceparent of the order's trace, created at newOrder.
    trace_context: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # draft-ietf-acme-profiles: the profile this order is issued under.
    profile: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # RFC 9773: the ARI certID of the certificate this order replaces.
    replaces: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    # Times the frontends' reconciler published this order's issue job again (reconciler.py).
    republished: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        Index("ix_orders_status_updated", "status", "updated_at"),
        # An account's orders list, a page at a time (frontend repo.accounts.order_page).
        Index("ix_orders_account_created", "account_id", "created_at", "id"),
        # Retention: orders that never got a certificate, by expiry (acme_ra.db.retention).
        Index("ix_orders_unissued_expires", "expires", postgresql_where=text("certificate_id IS NULL"),
              sqlite_where=text("certificate_id IS NULL")),
    )


class Authorization(Base):
    __tablename__ = "authorizations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    identifier_type: Mapped[str] = mapped_column(String(8))
    # The name without "*." for wildcard authorizations.
    identifier_value: Mapped[str] = mapped_column(String(255))
    wildcard: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=AuthzStatus.pending.value)
    expires: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_authz_reuse", "account_id", "identifier_type", "identifier_value", "status"),
        # the pending authorizations per account cap (frontend ratelimits.check_pending_authorizations)
        Index("ix_authz_pending_account", "account_id", "status", "expires"),
    )


class OrderAuthorization(Base):
    """Orders own a fixed list of authorizations; a valid one may be shared by several orders."""

    __tablename__ = "order_authorizations"
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    authz_id: Mapped[str] = mapped_column(ForeignKey("authorizations.id"), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)


class Challenge(Base):
    __tablename__ = "challenges"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    authz_id: Mapped[str] = mapped_column(ForeignKey("authorizations.id"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    token: Mapped[str] = mapped_column(String(64), default=new_id)
    status: Mapped[str] = mapped_column(String(16), default=ChallengeStatus.pending.value)
    validated: Mapped[dt.datetime | None]
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Times the frontends' reconciler published this challenge's validation job again (reconciler.py).
    republished: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Checks started on a redelivered validation job (the validator's poison-job count, worker.py);
    # the first delivery writes nothing.
    check_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Multi-perspective corroboration: each perspective's result and the quorum
    # (acme_ra_validator.mpic); NULL when validated without it.
    validation_record: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_challenges_status_updated", "status", "updated_at"),)


class Certificate(Base):
    __tablename__ = "certificates"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # Unique: one certificate per order, whatever happens to the jobs.
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    serial: Mapped[str] = mapped_column(String(64), index=True)  # lowercase hex
    chain_pem: Mapped[str] = mapped_column(Text)
    not_before: Mapped[dt.datetime]
    # Indexed: retention and the inventory of what expires when.
    not_after: Mapped[dt.datetime] = mapped_column(index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)  # newest first, issued per day
    revoked_at: Mapped[dt.datetime | None]
    revocation_reason: Mapped[int | None]
    # RFC 9773 certID: base64url(AKI keyIdentifier) "." base64url(serial DER content).
    ari_cert_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    # The inventory: SHA-256 of the leaf's sorted names (a renewal has the same: see
    # lifecycle.names_sha256) and its issuer (RFC 4514). NULL for certificates stored before 0013.
    names_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    issuer: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # Alternate chains the upstream offered (Link rel="alternate"): PEM strings, same leaf,
    # other issuers. None or [] when there are none.
    alternate_chains_pem: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)

    # Retention: the revoked certificates (kept), by expiry; a few rows however large the table.
    __table_args__ = (
        # Is a certificate about to lapse replaced already? (a later one with the same names)
        Index("ix_certificates_names_not_after", "names_sha256", "not_after"),
        Index("ix_certificates_revoked_not_after", "not_after", postgresql_where=text("revoked_at IS NOT NULL"),
              sqlite_where=text("revoked_at IS NOT NULL")),
    )



class RenewalWindow(Base):
    """A certificate's renewal window (RFC 9773) when it is not the one acme-ra computes: the
    upstream's, relayed (``source`` "upstream", read again at ``next_fetch_at``), or an
    operator's ``acme-ra certs renew-early`` (``source`` "operator": a window in the past,
    never overwritten by the upstream's). The frontend's renewalInfo serves it."""

    __tablename__ = "renewal_windows"
    certificate_id: Mapped[str] = mapped_column(
        ForeignKey("certificates.id", ondelete="CASCADE"), primary_key=True
    )
    source: Mapped[str] = mapped_column(String(16))  # upstream | operator
    # The upstream that issued the certificate (the journal's name), when one did.
    upstream: Mapped[str | None] = mapped_column(String(64), nullable=True)
    start: Mapped[dt.datetime | None]  # None: the upstream did not answer yet
    end: Mapped[dt.datetime | None]
    explanation_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # When the relay asks the upstream again (its Retry-After); None: never (operator's window).
    next_fetch_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    fetch_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

class BlockedKey(Base):
    """A public key refused for accounts and CSRs: a certificate for it was revoked for
    keyCompromise (acme_ra.blocked_keys)."""

    __tablename__ = "blocked_keys"
    # SHA-256 of the key's DER SubjectPublicKeyInfo, lowercase hex.
    spki_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The certificate whose keyCompromise revocation blocked it.
    certificate_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UpstreamOrderState(enum.StrEnum):
    """Where an upstream order stands; each is recorded *before* the step it names is taken."""

    creating = "creating"  # about to POST newOrder: an order may exist upstream, URL unknown, never finalized
    pending = "pending"  # the upstream order exists (url recorded); authorizations to satisfy
    finalizing = "finalizing"  # about to POST finalize, or sent without a recorded answer
    processing = "processing"  # finalize accepted; the upstream is signing
    valid = "valid"  # certificate URL recorded: download (idempotent) and store
    invalid = "invalid"  # the upstream refused; error holds why


class UpstreamAccount(Base):
    """The RA's own account at an upstream ACME CA: one per named upstream and directory URL,
    registered once with EAB and reused by every issuance and revocation."""

    __tablename__ = "upstream_accounts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # The upstream's name ("default" for the ACME_RA_UPSTREAM_* one, else from ACME_RA_CONFIG_FILE).
    upstream: Mapped[str] = mapped_column(String(64))
    directory_url: Mapped[str] = mapped_column(String(1024))
    # The account's private key (PKCS#8 PEM), sealed (acme_ra.sealing) with purpose
    # "upstream-account:<id>". Created before registration, so replicas share one key.
    key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    # The account URL (JWS "kid") once registered; None until then or after the upstream lost it.
    url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    eab_kid: Mapped[str | None] = mapped_column(String(255), nullable=True)
    registered_at: Mapped[dt.datetime | None]
    # How many times the account was registered (more than 1: the upstream lost it).
    registrations: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("upstream", "directory_url", name="uq_upstream_accounts_upstream_directory"),)


class UpstreamOrder(Base):
    """The one upstream order of an acme-ra order (the primary key makes it one).

    Written before each upstream step, so that a redelivered job, a restart or a second signer
    resumes this order instead of creating another: at most one upstream certificate per order.
    A signer works on it only while it holds the lease (``lease_owner`` until ``lease_until``).
    """

    __tablename__ = "upstream_orders"
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    upstream: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=UpstreamOrderState.creating.value)
    # The upstream order URL, its finalize URL and (once issued) the certificate URL.
    url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    finalize_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    certificate_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # The account (URL) the upstream order belongs to.
    account_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # Set when finalize is first attempted: from then on no other upstream order is ever created.
    finalized_at: Mapped[dt.datetime | None]
    # newOrder requests sent (more than 1: an earlier, never-finalized order was lost upstream).
    orders_created: Mapped[int] = mapped_column(Integer, default=0)
    # A problem as data when the upstream refused ({"type": ..., "detail": ...}).
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Upstream dns-01: the TXT records ([fqdn, value] pairs) about to be or being published,
    # recorded before they are published, so that a restart removes them.
    dns_records: Mapped[list[list[str]] | None] = mapped_column(JSON, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# The syntax of an upstream http-01 token (RFC 8555 §8.3: base64url, at least 128 bits), with
# an upper bound: the signer stores only tokens that match it, and the frontend's responder
# checks a request's token against it before asking the database.
UPSTREAM_TOKEN_PATTERN = r"[A-Za-z0-9_-]{22,255}"


class UpstreamKeyAuthorization(Base):
    """A key authorization the frontend's responder serves to an upstream CA (upstream
    http-01) at ``/.well-known/acme-challenge/<token>``.

    The signer writes the rows of an upstream order before POSTing its challenges and deletes
    them (by ``order_id``) once the upstream has decided; every later attempt on the order
    deletes what an earlier, dead one left. Rows past ``expires_at`` are never served.
    """

    __tablename__ = "upstream_key_authorizations"
    token: Mapped[str] = mapped_column(String(255), primary_key=True)
    # The acme-ra order whose upstream order asked for it (two orders may share an upstream
    # authorization, hence a token: each has its own row). Not a foreign key: the frontend's
    # own certificate (acme_ra_signer.frontend_tls) belongs to no order.
    order_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    upstream: Mapped[str] = mapped_column(String(64))
    # The name (or IP address) the upstream validates with it, for operators.
    identifier: Mapped[str] = mapped_column(String(255))
    # token "." base64url(thumbprint of the upstream account key) (RFC 8555 §8.1).
    key_authorization: Mapped[str] = mapped_column(String(512))
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RateCounter(Base):
    """Fixed-window counters shared by every frontend replica (rate limits)."""

    __tablename__ = "rate_counters"
    # "<limit name>:<subject>", e.g. "orders-per-account:<account id>".
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    window_start: Mapped[dt.datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class AdminToken(Base):
    """A bearer token of the admin API and console (`acme-ra admin-token create`).

    Only the SHA-256 of the token is stored: tokens are 256 random bits, so a fast hash is
    enough, and a stolen table lets nobody in."""

    __tablename__ = "admin_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    # What the token may do: "operator" (everything) or "read-only" (GET only: 403 on a change).
    scope: Mapped[str] = mapped_column(String(16), default="operator", server_default="operator")
    # After this the token is refused (401); None: it never expires.
    expires_at: Mapped[dt.datetime | None]


class AdminTokenScope(enum.StrEnum):
    operator = "operator"
    read_only = "read-only"


class AuditEntry(Base):
    """One change made through the admin plane (API, console, ``acme-ra``): who, when, from where,
    what and to what. Written in the change's own transaction where there is one; kept for ever
    (retention does not purge it: acme_ra.db.retention)."""

    __tablename__ = "audit_log"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The admin token's id and label; None and "cli:<OS user>" for `acme-ra` on the database.
    token_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    # The client's address (the proxy's client with a trusted X-Forwarded-For); "local" for the CLI.
    client: Mapped[str] = mapped_column(String(64))
    # e.g. "eab_key.create", "certificate.revoke", "admin_token.revoke" (acme_ra.db.audit).
    action: Mapped[str] = mapped_column(String(64))
    # The id of what changed: an EAB kid, a certificate id, an admin token id...
    subject: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    # Newest first, and newest first per action: the console's and API's listings.
    __table_args__ = (
        Index("ix_audit_log_at", "at", "id"),
        Index("ix_audit_log_action_at", "action", "at"),
    )
