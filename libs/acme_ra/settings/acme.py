"""Settings of the ACME service the frontends offer: provisioners, profiles, lifetimes, challenge
types, identifier policy, rate limits, caps and the HTTP limits of the ACME listener."""

from __future__ import annotations

import ipaddress
from typing import Self

from pydantic import Field, field_validator, model_validator

from acme_ra.settings.section import MAX_ISSUER_DOMAIN_NAMES, SettingsSection, normal_issuer_domain


class AcmeSettings(SettingsSection):
    """What the ACME API offers and refuses."""

    # ACME_RA_PROVISIONERS: comma list of provisioner names served under /acme/<name>/.
    provisioners: str = "acme"
    # ACME_RA_TERMS_OF_SERVICE_URL: advertised in the directory; agreement then required. A new URL
    # is a change of terms: accounts must agree again (userActionRequired) before ordering.
    terms_of_service_url: str = ""
    # ACME_RA_WEBSITE_URL: advertised in the directory meta.
    website_url: str = ""
    # ACME_RA_ORDER_LIFETIME_SECONDS: how long a pending order lives (default 1 day).
    order_lifetime_seconds: int = Field(86400, gt=0)
    # ACME_RA_AUTHZ_LIFETIME_SECONDS: how long a valid authorization may be reused (default 30 days).
    authz_lifetime_seconds: int = Field(30 * 86400, gt=0)
    # ACME_RA_CHALLENGE_TYPES: the challenge types offered (comma list): http-01, dns-01,
    # tls-alpn-01, and the drafts' dns-account-01 and dns-persist-01 (docs/dns-challenges.md).
    challenge_types: str = "http-01,dns-01,tls-alpn-01"
    # ACME_RA_DNS_PERSIST_ISSUER_DOMAINS: comma list (at most 10) of the issuer domain names a
    # dns-persist-01 record may name to authorise acme-ra; advertised in its challenges and in the
    # directory (issuerDomainNames, caaIdentities). Required when dns-persist-01 is offered.
    dns_persist_issuer_domains: str = ""
    # ACME_RA_REUSE_VALID_AUTHORIZATIONS: a new order reuses the account's valid authorizations.
    reuse_valid_authorizations: bool = True
    # ACME_RA_ARI_RETRY_AFTER_SECONDS: the Retry-After of renewalInfo answers (RFC 9773): how
    # long ARI clients (certbot, lego) wait before asking again, so how soon they see
    # `acme-ra certs renew-early` at the latest. Boulder's 6 h by default; lower it before a CA switch.
    ari_retry_after_seconds: int = Field(21600, ge=1, le=7 * 86400)
    # ACME_RA_NONCE_LIFETIME_SECONDS: how long an issued nonce stays redeemable.
    nonce_lifetime_seconds: int = Field(3600, gt=0)
    # ACME_RA_RETRY_AFTER_SECONDS: Retry-After on processing challenges and orders.
    retry_after_seconds: int = Field(1, ge=1, le=60)
    # ACME_RA_ANSWER_WAIT_SECONDS: how long a challenge POST or finalize waits, after its commit,
    # for the validator's or signer's event before it answers "processing" + Retry-After; 0: never.
    answer_wait_seconds: float = Field(2.0, ge=0, le=10)
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

    @field_validator("provisioners")
    @classmethod
    def _check_provisioners(cls, value: str) -> str:
        names = [v.strip() for v in value.split(",") if v.strip()]
        if not names or not all(n.replace("-", "").replace("_", "").isalnum() for n in names):
            raise ValueError("must be a comma list of names made of letters, digits, '-' and '_'")
        return value

    @field_validator("challenge_types")
    @classmethod
    def _check_challenge_types(cls, value: str) -> str:
        known = {"http-01", "dns-01", "tls-alpn-01", "dns-account-01", "dns-persist-01"}
        types = {t.strip() for t in value.split(",") if t.strip()}
        if not types or types - known:
            raise ValueError(f"must be a comma list of {', '.join(sorted(known))}")
        return value

    @field_validator("dns_persist_issuer_domains")
    @classmethod
    def _check_issuer_domains(cls, value: str) -> str:
        names = [v.strip() for v in value.split(",") if v.strip()]
        if len(names) > MAX_ISSUER_DOMAIN_NAMES:
            raise ValueError(f"names {len(names)} issuer domain names; at most {MAX_ISSUER_DOMAIN_NAMES}")
        for name in names:
            normal = normal_issuer_domain(name)
            if not normal or len(normal) > 253 or any(not label or len(label) > 63 for label in normal.split(".")):
                raise ValueError(f"{name!r} is not a domain name")
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

    @model_validator(mode="after")
    def _check_default_profile(self) -> Self:
        if self.default_profile not in self.profile_descriptions:
            raise ValueError(
                f"ACME_RA_DEFAULT_PROFILE {self.default_profile!r} is not one of ACME_RA_PROFILES"
            )
        return self

    @model_validator(mode="after")
    def _check_dns_persist(self) -> Self:
        if "dns-persist-01" in self.challenge_type_list and not self.dns_persist_issuer_domain_list:
            raise ValueError("ACME_RA_CHALLENGE_TYPES offers dns-persist-01: set ACME_RA_DNS_PERSIST_ISSUER_DOMAINS")
        return self

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
    def dns_persist_issuer_domain_list(self) -> list[str]:
        """ACME_RA_DNS_PERSIST_ISSUER_DOMAINS as the draft wants them: lowercase A-labels, no final dot."""
        names = (normal_issuer_domain(v) for v in self.dns_persist_issuer_domains.split(",") if v.strip())
        return list(dict.fromkeys(names))
