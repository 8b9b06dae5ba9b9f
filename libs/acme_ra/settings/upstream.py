"""Settings of the signer's upstream CA when it is configured by environment (one upstream named
"default"; named upstreams of every type live in ACME_RA_CONFIG_FILE: docs/upstream.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from acme_ra.settings.section import SettingsSection


class UpstreamSettings(SettingsSection):
    """ACME_RA_UPSTREAM and ACME_RA_UPSTREAM_*: the signer's back end."""

    # ACME_RA_UPSTREAM: the signer's back end: "lab" (dev and tests only) or "acme" (the configured
    # upstreams: an ACME CA with External Account Binding - InCommon/Sectigo, Let's Encrypt, ZeroSSL,
    # step-ca, Pebble - and, in ACME_RA_CONFIG_FILE, upstreams of type vault, command or lab).
    upstream: Literal["lab", "acme"] = "lab"
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
    # it), "dns-persist-01" (a standing record the operator published once: `acme-ra upstream
    # persist-record NAME`). Checked by the signer at start-up (the old "answer" and "fail" are refused).
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
    # ACME_RA_UPSTREAM_ARI_POLL_SECONDS: how often the signer looks for relayed renewal windows
    # due again (each is read again after the upstream's Retry-After, at least this far apart).
    upstream_ari_poll_seconds: float = Field(60.0, gt=0)
    # ACME_RA_UPSTREAM_PROXY: outbound HTTP(S) proxy for upstream traffic (http://host:port).
    upstream_proxy: str = ""
    # ACME_RA_CERT_LIFETIME_DAYS: lifetime of lab-CA certificates.
    cert_lifetime_days: int = Field(90, gt=0, le=398)
