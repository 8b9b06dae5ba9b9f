"""Configuration from ``ACME_RA_*`` environment variables (pydantic-settings).

One settings class; every service reads the fields it needs. ``load_settings`` turns a
validation error into one line that names the variable, and exits.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ACME_RA_"
# ACME_RA_* variables that are not settings of the services: the test suite's (ACME_RA_TEST_*,
# ACME_RA_HYPOTHESIS_*) and the benchmark's (ACME_RA_BENCH_*). Never reported as unknown.
NOT_SETTINGS_PREFIXES = (ENV_PREFIX + "TEST_", ENV_PREFIX + "HYPOTHESIS_", ENV_PREFIX + "BENCH_")
# What the signer gives an external-command upstream's programs (upstream/command.py): a script
# that runs acme-ra itself must not be warned about them.
COMMAND_UPSTREAM_VARIABLES = frozenset(ENV_PREFIX + name for name in (
    "ORDER_ID", "NAMES", "PROFILE", "PROVISIONER", "SERIAL", "REASON"))


def parse_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or (with a default port) a bare host."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif value.count(":") > 1:  # bare IPv6 address
        host, port_text = value, ""
    else:
        host, port_text = value, ""
    if not host:
        raise ValueError(f"no host in {value!r}")
    if not port_text:
        if default_port is None:
            raise ValueError(f"expected host:port, got {value!r}")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port_text)


def http_base(listen: str) -> str:
    """The http:// base URL that reaches a listener configured as ``listen`` (``host:port``) from
    this machine: a wildcard address is reached on loopback."""
    host, port = parse_host_port(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Settings(BaseSettings):
    """Every ``ACME_RA_*`` variable. Names are a documented contract (README, docs/configuration.md)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False)

    # ACME_RA_STATE_DIR: lab CA, embedded NATS data, SQLite file, generated TLS material.
    state_dir: Path = Path("./var")
    # ACME_RA_STRICT_CONFIG: an ACME_RA_* variable that is no setting (a misspelling) stops every
    # service and acme-ra command with one line (exit 2); false: a warning naming the closest setting.
    strict_config: bool = False
    # ACME_RA_DATABASE_URL: SQLAlchemy async URL; default SQLite under the state dir.
    database_url: str = ""
    # ACME_RA_NATS_URL: unset means make dev (acme_ra_tools.dev) starts an embedded nats-server.
    nats_url: str = ""
    # ACME_RA_NATS_USER / ACME_RA_NATS_PASSWORD (or _FILE): this service's NATS user (each service
    # its own, with only the permissions its job needs: acme_ra.natsauth, docs/security.md); unset:
    # connect without credentials (a NATS without auth). make dev and make lab set them.
    nats_user: str = ""
    nats_password: SecretStr | None = None
    nats_password_file: Path | None = None
    # ACME_RA_NATS_TLS_CA: PEM roots trusted for NATS's TLS (tls:// URLs, or a server that requires
    # TLS); unset = the system's roots. ACME_RA_NATS_TLS_CERT_FILE / _KEY_FILE: a client certificate.
    nats_tls_ca: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    # ACME_RA_LISTEN: the public ACME listener (frontend).
    listen: str = "127.0.0.1:8443"
    # ACME_RA_EXTERNAL_URL: the base URL clients see (behind a load balancer: its URL).
    external_url: str = "https://localhost:8443"
    # ACME_RA_TLS_CERT_FILE / ACME_RA_TLS_KEY_FILE: bring your own; unset = issued by the lab CA.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # ACME_RA_UPSTREAM: the signer's back end: "lab" (dev and tests only) or "acme" (the configured
    # upstreams: an ACME CA with External Account Binding - InCommon/Sectigo, Let's Encrypt, ZeroSSL,
    # step-ca, Pebble - and, in ACME_RA_CONFIG_FILE, upstreams of type vault, command or lab).
    upstream: Literal["lab", "acme"] = "lab"
    # ACME_RA_CONFIG_FILE: optional YAML or TOML file; its `upstreams` section declares named
    # upstreams selected per profile or provisioner (docs/upstream.md). Env vars suffice for one.
    # Its `client_networks` section: who may use the ACME API (docs/policy.md).
    config_file: Path | None = None
    # ACME_RA_UPSTREAM_*: the one upstream ACME CA (named "default") when upstream=acme.
    # ACME_RA_UPSTREAM_DIRECTORY_URL: e.g. https://acme.sectigo.com/v2/InCommonRSAOV
    upstream_directory_url: str = ""
    # ACME_RA_UPSTREAM_EAB_KID / ACME_RA_UPSTREAM_EAB_HMAC_KEY (or _FILE): the EAB pair the CA gave.
    upstream_eab_kid: str = ""
    upstream_eab_hmac_key: SecretStr | None = None
    upstream_eab_hmac_key_file: Path | None = None
    # ACME_RA_UPSTREAM_EMAIL: contact of the upstream account (optional).
    upstream_email: str = ""
    # ACME_RA_UPSTREAM_CA_BUNDLE: PEM roots trusted for the upstream's TLS; unset = certifi's roots.
    upstream_ca_bundle: Path | None = None
    # ACME_RA_UPSTREAM_CERT_LIFETIME_DAYS: ask the upstream for this lifetime (notAfter); unset =
    # the upstream's default (not every CA accepts notAfter).
    upstream_cert_lifetime_days: int | None = Field(None, gt=0, le=3650)
    # ACME_RA_UPSTREAM_AUTHZ_STRATEGY: how the signer satisfies upstream authorizations that are
    # not already valid: "prevalidated" (the CA holds them, e.g. Sectigo DCV inheritance: a pending
    # one gets its ACME_RA_UPSTREAM_CHALLENGE_TYPE challenge POSTed once, nothing provisioned),
    # "dns-01" (the signer publishes the TXT record: ACME_RA_UPSTREAM_DNS_*), "http-01" (the
    # frontends serve the key authorization: ACME_RA_UPSTREAM_HTTP01_LISTEN; hosts redirect to
    # it). Checked by the signer at start-up (the old "answer" and "fail" are refused).
    upstream_authz_strategy: str = "prevalidated"
    # ACME_RA_UPSTREAM_CHALLENGE_TYPE: the challenge POSTed by "prevalidated" (dns-01 uses dns-01).
    upstream_challenge_type: Literal["http-01", "dns-01", "tls-alpn-01"] = "http-01"
    # ACME_RA_UPSTREAM_DNS_RFC2136_SERVER: host:port of the primary DNS server that takes RFC 2136
    # updates of the upstream dns-01 TXT records (authz_strategy dns-01).
    upstream_dns_rfc2136_server: str = ""
    # ACME_RA_UPSTREAM_DNS_HOOK: instead of RFC 2136, a program called as `HOOK add FQDN VALUE`
    # and `HOOK remove FQDN VALUE` that publishes and removes the TXT record (any DNS provider).
    upstream_dns_hook: Path | None = None
    # ACME_RA_UPSTREAM_DNS_TSIG_KEY_NAME: name of the TSIG key that signs those updates.
    upstream_dns_tsig_key_name: str = ""
    # ACME_RA_UPSTREAM_DNS_TSIG_ALGORITHM: its algorithm (hmac-sha256, -sha384, -sha512, ...).
    upstream_dns_tsig_algorithm: str = "hmac-sha256"
    # ACME_RA_UPSTREAM_DNS_TSIG_SECRET: its base64 secret (prefer the _FILE variable).
    upstream_dns_tsig_secret: SecretStr | None = None
    # ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE: file holding the base64 secret alone (as in the
    # `secret "..."` line BIND's tsig-keygen writes), read at start-up, never logged.
    upstream_dns_tsig_secret_file: Path | None = None
    # ACME_RA_UPSTREAM_DNS_NAMESERVERS: comma list of IP:port the signer asks for its CNAME/SOA
    # lookups and its propagation check (split-horizon DNS, tests); empty = the system's
    # resolvers for lookups and each zone's NS servers on port 53 for the check.
    upstream_dns_nameservers: str = ""
    # ACME_RA_UPSTREAM_DNS_PROPAGATION_TIMEOUT_SECONDS: how long the signer waits for every
    # authoritative server of the zone to answer the TXT record before it gives up.
    upstream_dns_propagation_timeout_seconds: float = Field(120.0, gt=0)
    # ACME_RA_UPSTREAM_VALIDATION_TIMEOUT_SECONDS: how long the upstream may take to validate an
    # authorization once its challenge is POSTed (CERTInext: minutes).
    upstream_validation_timeout_seconds: float = Field(600.0, gt=0)
    # ACME_RA_UPSTREAM_HTTP01_LISTEN: host:port of the plain-HTTP listener on which every frontend
    # process that has it serves the upstream http-01 key authorizations (authz_strategy http-01)
    # at /.well-known/acme-challenge/<token>, and nothing else; e.g. 0.0.0.0:80. Empty = off.
    upstream_http01_listen: str = ""
    # ACME_RA_UPSTREAM_ACCOUNT_KEY_TYPE: key type of a new upstream account (ES256 signs every
    # upstream request far cheaper than RS256). An account already stored keeps its own key.
    upstream_account_key_type: Literal["rsa2048", "ec256"] = "ec256"
    # ACME_RA_UPSTREAM_HTTP_TIMEOUT_SECONDS: one HTTP request to the upstream.
    upstream_http_timeout_seconds: float = Field(60.0, gt=0)
    # ACME_RA_UPSTREAM_ORDER_TIMEOUT_SECONDS: how long one issue job waits for the upstream order
    # (slow CAs sign in 30 s and more) before handing it back to the queue to resume later.
    upstream_order_timeout_seconds: float = Field(600.0, gt=0)
    # ACME_RA_ARI_RETRY_AFTER_SECONDS: the Retry-After of renewalInfo answers (RFC 9773): how
    # long ARI clients (certbot, lego) wait before asking again, so how soon they see
    # `acme-ra certs renew-early` at the latest. Boulder's 6 h by default; lower it before a CA switch.
    ari_retry_after_seconds: int = Field(21600, ge=1, le=7 * 86400)
    # ACME_RA_UPSTREAM_ARI_POLL_SECONDS: how often the signer looks for relayed renewal windows
    # due again (each is read again after the upstream's Retry-After, at least this far apart).
    upstream_ari_poll_seconds: float = Field(60.0, gt=0)
    # ACME_RA_UPSTREAM_PROXY: outbound HTTP(S) proxy for upstream traffic (http://host:port).
    upstream_proxy: str = ""
    # ACME_RA_PROVISIONERS: comma list of provisioner names served under /acme/<name>/.
    provisioners: str = "acme"
    # ACME_RA_VALIDATION_HTTP_PORT / _TLS_PORT: where the validator connects (80/443 in production).
    validation_http_port: int = Field(80, gt=0, lt=65536)
    validation_tls_port: int = Field(443, gt=0, lt=65536)
    # ACME_RA_DNS_RESOLVERS: comma list of host[:port]; empty = the system's resolvers.
    dns_resolvers: str = ""
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
    # ACME_RA_RECONCILE_MAX_REPUBLICATIONS: times the frontends' reconciler publishes again the job
    # of a challenge or order stuck in processing; then it ends it invalid; default 10.
    reconcile_max_republications: int = Field(10, ge=1, le=1000)
    # ACME_RA_CAA_IDENTITIES: comma list of CA domain names CAA `issue`/`issuewild` records must
    # name (in RA mode the upstream CA's, e.g. sectigo.com,incommon.org); default "" = no CAA check.
    caa_identities: str = ""
    # ACME_RA_METRICS_LISTEN: the frontend's Prometheus /metrics listener (empty: off).
    metrics_listen: str = "127.0.0.1:9123"
    # ACME_RA_VALIDATOR_LISTEN / ACME_RA_SIGNER_LISTEN: health and metrics of the workers.
    validator_listen: str = "127.0.0.1:9124"
    signer_listen: str = "127.0.0.1:9125"
    # ACME_RA_ADMIN_LISTEN: the admin API (/api/) and web console (python -m acme_ra_admin);
    # never the public ACME port. Plain HTTP: keep it on loopback or behind a TLS proxy.
    admin_listen: str = "127.0.0.1:9443"
    # ACME_RA_ADMIN_URL / ACME_RA_ADMIN_TOKEN: where the `acme-ra` command finds the admin API and
    # the bearer token it sends there; unset URL: the command works on the database directly.
    admin_url: str = ""
    admin_token: SecretStr | None = None
    # ACME_RA_TRACE_URL_TEMPLATE: the console's link to an order's trace, "{trace_id}" replaced,
    # e.g. http://localhost:16686/trace/{trace_id} (Jaeger); empty: no link.
    trace_url_template: str = ""
    # ACME_RA_TERMS_OF_SERVICE_URL: advertised in the directory; agreement then required. A new URL
    # is a change of terms: accounts must agree again (userActionRequired) before ordering.
    terms_of_service_url: str = ""
    # ACME_RA_WEBSITE_URL: advertised in the directory meta.
    website_url: str = ""
    # ACME_RA_ORDER_LIFETIME_SECONDS: how long a pending order lives (default 1 day).
    order_lifetime_seconds: int = Field(86400, gt=0)
    # ACME_RA_AUTHZ_LIFETIME_SECONDS: how long a valid authorization may be reused (default 30 days).
    authz_lifetime_seconds: int = Field(30 * 86400, gt=0)
    # ACME_RA_RETENTION_DAYS: how long finished orders, authorizations and challenges are kept
    # (an order with a certificate: this long after the certificate expired; revoked ones are
    # kept); the signers purge hourly, one at a time (acme_ra.db.retention). 0: keep everything.
    retention_days: int = Field(30, ge=0, le=36500)
    # ACME_RA_CHALLENGE_TYPES: the challenge types offered (comma list).
    challenge_types: str = "http-01,dns-01,tls-alpn-01"
    # ACME_RA_REUSE_VALID_AUTHORIZATIONS: a new order reuses the account's valid authorizations.
    reuse_valid_authorizations: bool = True
    # ACME_RA_NONCE_LIFETIME_SECONDS: how long an issued nonce stays redeemable.
    nonce_lifetime_seconds: int = Field(3600, gt=0)
    # ACME_RA_RETRY_AFTER_SECONDS: Retry-After on processing challenges and orders.
    retry_after_seconds: int = Field(1, ge=1, le=60)
    # ACME_RA_ANSWER_WAIT_SECONDS: how long a challenge POST or finalize waits, after its commit,
    # for the validator's or signer's event before it answers "processing" + Retry-After; 0: never.
    answer_wait_seconds: float = Field(2.0, ge=0, le=10)
    # ACME_RA_CERT_LIFETIME_DAYS: lifetime of lab-CA certificates.
    cert_lifetime_days: int = Field(90, gt=0, le=398)
    # ACME_RA_DB_POOL_SIZE: connections per service process.
    db_pool_size: int = Field(10, gt=0)
    # ACME_RA_SECRET_KEY / ACME_RA_SECRET_KEY_FILE: seals secrets at rest (EAB HMAC keys, the
    # upstream account key, the nonce HMAC key), a key derived per purpose, and keys the admin
    # console's sessions. Unset: a key is created once in STATE_DIR/secret.key (labs only:
    # replicas on several machines must share one key).
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    # ACME_RA_EAB_REQUIRED: new accounts must carry an External Account Binding made with
    # `acme-ra eab create`.
    eab_required: bool = False
    # ACME_RA_POLICY_ALLOW / ACME_RA_POLICY_DENY: comma lists of identifier rules
    # (name, .suffix, CIDR; see docs/policy.md). ACME_RA_POLICY_WILDCARDS: allow wildcard names.
    policy_allow: str = ""
    policy_deny: str = ""
    policy_wildcards: bool = True
    # ACME_RA_POLICY_CLIENT_NETWORKS: comma list of CIDRs whose clients may use the ACME API (any
    # name the policy allows); `client_networks` in ACME_RA_CONFIG_FILE adds networks with their own
    # identifier rules, reloaded when the file changes (docs/policy.md). Both unset: every address.
    policy_client_networks: str = ""
    # ACME_RA_PROFILES: the ACME profiles offered, "name=description" comma list
    # (draft-ietf-acme-profiles). ACME_RA_DEFAULT_PROFILE: used when an order names none.
    profiles: str = "tlsserver=TLS server certificate for the names in the order"
    default_profile: str = "tlsserver"
    # Rate limits, shared by every frontend replica (kept in the database). 0 turns one off.
    # ACME_RA_RATE_NEW_ACCOUNTS_PER_IP_PER_HOUR
    rate_new_accounts_per_ip_per_hour: int = Field(20, ge=0)
    # ACME_RA_RATE_NEW_ORDERS_PER_ACCOUNT_PER_HOUR
    rate_new_orders_per_account_per_hour: int = Field(300, ge=0)
    # ACME_RA_RATE_FAILED_VALIDATIONS_PER_NAME_PER_HOUR (per account and name)
    rate_failed_validations_per_name_per_hour: int = Field(5, ge=0)
    # ACME_RA_RATE_CERTIFICATES_PER_DOMAIN_PER_WEEK (per registered domain; an RA fronts one
    # organisation's domains, so the default is far above a public CA's)
    rate_certificates_per_domain_per_week: int = Field(5000, ge=0)
    # ACME_RA_RATE_NEW_ORDERS_PER_EAB_KEY_PER_HOUR (all accounts bound to one EAB key)
    rate_new_orders_per_eab_key_per_hour: int = Field(1000, ge=0)
    # Caps on what one client can make the RA store (docs/security.md, "Caps and connection use").
    # ACME_RA_LIMIT_PENDING_AUTHZ_PER_ACCOUNT: pending, unexpired authorizations one account may
    # hold (Boulder: 1,000); a newOrder that would pass it is refused rateLimited. 0: no cap.
    limit_pending_authz_per_account: int = Field(1000, ge=0)
    # ACME_RA_LIMIT_IDENTIFIERS_PER_ORDER: identifiers in one order (Boulder: 100), else malformed.
    limit_identifiers_per_order: int = Field(100, ge=1, le=1000)
    # ACME_RA_LIMIT_ACCOUNTS_IPV6_PREFIX: ACME_RA_RATE_NEW_ACCOUNTS_PER_IP_PER_HOUR counts an IPv6
    # client per network of this prefix length (one client usually holds a whole /64).
    limit_accounts_ipv6_prefix: int = Field(64, ge=0, le=128)
    # ACME_RA_LIMIT_ACCOUNTS_IPV4_PREFIX: the same for an IPv4 client (32: per address).
    limit_accounts_ipv4_prefix: int = Field(32, ge=0, le=32)
    # ACME_RA_TRUSTED_PROXIES: CIDRs of load balancers whose X-Forwarded-For names the client, and
    # whose X-Forwarded-Proto: https makes the admin console's session cookie Secure.
    trusted_proxies: str = ""
    # ACME_RA_SHUTDOWN_DELAY_SECONDS: on SIGTERM the frontend reports not-ready this long before it
    # stops accepting connections (load balancers take it out first), then drains in-flight requests.
    shutdown_delay_seconds: float = Field(2, ge=0, le=60)
    # ACME_RA_FRONTEND_WORKERS: frontend processes sharing the ACME port (one event loop each);
    # up to one per core. Each has its own database pool (ACME_RA_DB_POOL_SIZE) and NATS connection.
    frontend_workers: int = Field(1, ge=1, le=64)
    # HTTP limits of the ACME listener, enforced by the frontend itself (acme_ra_frontend/http_limits.py):
    # ACME_RA_HTTP_MAX_REQUEST_LINE_BYTES: longest request target (path and query); longer: 414.
    http_max_request_line_bytes: int = Field(8192, ge=256, le=1_048_576)
    # ACME_RA_HTTP_MAX_HEADER_COUNT: most request headers; more: 431.
    http_max_header_count: int = Field(100, ge=16, le=10_000)
    # ACME_RA_HTTP_MAX_HEADER_BYTES: largest request head (request line and headers); larger: 431.
    http_max_header_bytes: int = Field(32_768, ge=1024, le=1_048_576)
    # ACME_RA_HTTP_MAX_BODY_BYTES: largest request body (Boulder: 50,000 bytes); larger: 413.
    http_max_body_bytes: int = Field(50_000, ge=1024, le=10_485_760)
    # ACME_RA_HTTP_HEADER_TIMEOUT_SECONDS: a request head must be complete this long after its first byte; else 408.
    http_header_timeout_seconds: float = Field(10, gt=0, le=600)
    # ACME_RA_HTTP_BODY_TIMEOUT_SECONDS: a request body must be complete this long after its head; else 408.
    http_body_timeout_seconds: float = Field(30, gt=0, le=600)
    # ACME_RA_HTTP_IDLE_TIMEOUT_SECONDS: a connection without a request in progress (new, or kept alive
    # after a response) is closed after this long (uvicorn's timeout_keep_alive).
    http_idle_timeout_seconds: float = Field(5, gt=0, le=3600)
    # ACME_RA_LOG_LEVEL
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator(
        "listen", "validator_listen", "signer_listen", "metrics_listen", "admin_listen", "upstream_http01_listen"
    )
    @classmethod
    def _check_listen(cls, value: str) -> str:
        if value:
            parse_host_port(value)
        return value

    @field_validator("external_url")
    @classmethod
    def _check_external_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://acme.example.org")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("admin_url")
    @classmethod
    def _check_admin_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError("must be an absolute http(s) URL such as http://127.0.0.1:9443")
        return value.rstrip("/")

    @field_validator("trace_url_template")
    @classmethod
    def _check_trace_url_template(cls, value: str) -> str:
        if value and "{trace_id}" not in value:
            raise ValueError("must contain {trace_id}, e.g. http://localhost:16686/trace/{trace_id}")
        return value

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

    @field_validator("provisioners")
    @classmethod
    def _check_provisioners(cls, value: str) -> str:
        names = [v.strip() for v in value.split(",") if v.strip()]
        if not names or not all(n.replace("-", "").replace("_", "").isalnum() for n in names):
            raise ValueError("must be a comma list of names made of letters, digits, '-' and '_'")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must start with postgresql+asyncpg:// or sqlite+aiosqlite://")
        return value

    @field_validator("challenge_types")
    @classmethod
    def _check_challenge_types(cls, value: str) -> str:
        known = {"http-01", "dns-01", "tls-alpn-01"}
        types = {t.strip() for t in value.split(",") if t.strip()}
        if not types or types - known:
            raise ValueError(f"must be a comma list of {', '.join(sorted(known))}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        for item in filter(None, (v.strip() for v in value.split(","))):
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("policy_allow", "policy_deny")
    @classmethod
    def _check_policy_rules(cls, value: str) -> str:
        from acme_ra.protocol.policy import parse_rules

        parse_rules(value)
        return value

    @field_validator("policy_client_networks")
    @classmethod
    def _check_client_networks(cls, value: str) -> str:
        for item in filter(None, (v.strip() for v in value.split(","))):
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("secret_key_file")
    @classmethod
    def _check_secret_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _check_default_profile(self) -> Settings:
        if self.default_profile not in self.profile_descriptions:
            raise ValueError(
                f"ACME_RA_DEFAULT_PROFILE {self.default_profile!r} is not one of ACME_RA_PROFILES"
            )
        return self

    @model_validator(mode="after")
    def _check_nats_credentials(self) -> Settings:
        if self.nats_password is not None and self.nats_password_file is not None:
            raise ValueError("set ACME_RA_NATS_PASSWORD or ACME_RA_NATS_PASSWORD_FILE, not both")
        has_password = self.nats_password is not None or self.nats_password_file is not None
        if bool(self.nats_user) != has_password:
            raise ValueError("ACME_RA_NATS_USER and ACME_RA_NATS_PASSWORD(_FILE) go together")
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("ACME_RA_NATS_TLS_CERT_FILE and ACME_RA_NATS_TLS_KEY_FILE go together")
        for path in (self.nats_password_file, self.nats_tls_ca, self.nats_tls_cert_file, self.nats_tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"NATS file {path} does not exist")
        return self

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("ACME_RA_TLS_CERT_FILE and ACME_RA_TLS_KEY_FILE go together")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        return self

    # Derived values -------------------------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.state_dir / 'acme-ra.db').resolve()}"

    @property
    def profile_descriptions(self) -> dict[str, str]:
        result = {}
        for item in self.profiles.split(","):
            name, _, description = item.partition("=")
            if name.strip():
                result[name.strip()] = description.strip() or name.strip()
        return result

    @property
    def challenge_type_list(self) -> list[str]:
        return [t.strip() for t in self.challenge_types.split(",") if t.strip()]

    @property
    def provisioner_names(self) -> list[str]:
        return [v.strip() for v in self.provisioners.split(",") if v.strip()]

    @property
    def resolver_addresses(self) -> list[tuple[str, int]]:
        return [parse_host_port(v.strip(), 53) for v in self.dns_resolvers.split(",") if v.strip()]

    @property
    def caa_identity_list(self) -> list[str]:
        return [v.strip().lower() for v in self.caa_identities.split(",") if v.strip()]

    def sealing_secret(self) -> bytes:
        """The secret that seals secrets at rest (see ACME_RA_SECRET_KEY)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        if self.secret_key_file is not None:
            return self.secret_key_file.read_bytes().strip()
        path = self.state_dir / "secret.key"
        if not path.exists():
            import os
            import secrets as _secrets

            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(_secrets.token_urlsafe(32) + "\n")
        return path.read_bytes().strip()

    @property
    def lab_ca_dir(self) -> Path:
        return self.state_dir / "lab-ca"

    @property
    def frontend_tls_paths(self) -> tuple[Path, Path]:
        """The frontend's certificate and key: the configured pair or the lab-issued one."""
        if self.tls_cert_file and self.tls_key_file:
            return self.tls_cert_file, self.tls_key_file
        return self.state_dir / "tls" / "frontend.crt", self.state_dir / "tls" / "frontend.key"


def _one_line(error: ValidationError) -> str:
    """The first error as one line; a secret's value is never shown, a URL's password masked."""
    from acme_ra.redaction import mask_url

    first = error.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "__root__"]
    name = (ENV_PREFIX + loc[0].upper()) if loc else "configuration"
    message = mask_url(first.get("msg", "invalid").removeprefix("Value error, "))
    value = first.get("input")
    field = Settings.model_fields.get(loc[0]) if loc else None
    secret = field is not None and "SecretStr" in str(field.annotation)
    shown = f"={mask_url(repr(value))}" if loc and isinstance(value, (str, int)) and not secret else ""
    return f"acme-ra: invalid configuration: {name}{shown}: {message}"


def setting_names() -> list[str]:
    """Every variable the settings read: ``ACME_RA_<FIELD>``."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``ACME_RA_*`` variable that is no setting, naming the closest one."""
    known = setting_names()
    lines = []
    for variable in sorted(environ):
        name = variable.upper()
        if (not name.startswith(ENV_PREFIX) or name in known or name in COMMAND_UPSTREAM_VARIABLES
                or name.startswith(NOT_SETTINGS_PREFIXES)):
            continue
        closest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {closest[0]}?" if closest else "see docs/configuration.md"
        lines.append(f"unknown variable {variable} ({hint})")
    return lines


@functools.cache
def get_settings() -> Settings:
    """The process's settings; on invalid configuration print one line and exit 2. An unknown
    ACME_RA_* variable is a warning on stderr (one line each), or that error under
    ACME_RA_STRICT_CONFIG=true."""
    try:
        settings = Settings()
    except ValidationError as error:
        print(_one_line(error), file=sys.stderr)
        raise SystemExit(2) from None
    unknown = unknown_variables(os.environ)
    if unknown and settings.strict_config:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        print(f"acme-ra: invalid configuration: {unknown[0]}{more}; ACME_RA_STRICT_CONFIG=true refuses it",
              file=sys.stderr)
        raise SystemExit(2)
    for line in unknown:
        print(f"acme-ra: warning: {line}", file=sys.stderr)
    return settings
