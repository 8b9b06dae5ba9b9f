"""The configuration of an ``acme`` upstream (``type: acme``, or no ``type``): from the
``ACME_RA_UPSTREAM_*`` variables (the upstream named ``default``) or from
``upstreams.<name>`` in ``ACME_RA_CONFIG_FILE`` (the keys: ``catalog.py``'s docstring)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from acme_ra.config import Settings
from acme_ra_signer.upstream.config_errors import PREFIX, UpstreamConfigError, read_secret, validated

# The name of the upstream the ACME_RA_UPSTREAM_* variables configure.
DEFAULT_UPSTREAM = "default"

# The strategies of authz_strategy (each is an entry of authorizations.STRATEGIES); the values
# that were replaced, and by what.
AUTHZ_STRATEGIES = ("prevalidated", "dns-01", "http-01", "dns-persist-01")
REPLACED_STRATEGIES = {
    "answer": "prevalidated (a pending authorization gets its challenge POSTed once, nothing provisioned), "
    "or dns-01 to have the signer publish the TXT record, or http-01 to have the frontends serve the "
    "key authorization",
    "fail": "prevalidated (orders whose upstream authorization does not become valid fail, naming it)",
}
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")


@dataclass(frozen=True)
class Rfc2136:
    """A primary DNS server that takes TSIG-signed dynamic updates (RFC 2136)."""

    host: str
    port: int
    key_name: str
    algorithm: str
    secret: SecretStr = field(repr=False)


@dataclass(frozen=True)
class Upstream:
    """One upstream ACME CA as configured. ``origin`` names where each setting came from, for
    error messages: ``ACME_RA_UPSTREAM_`` or ``/etc/acme-ra.yaml: upstreams.incommon.``."""

    name: str
    directory_url: str
    eab_kid: str = ""
    eab_hmac_key: SecretStr | None = field(default=None, repr=False)
    email: str = ""
    ca_bundle: Path | None = None
    cert_lifetime_days: int | None = None
    authz_strategy: str = "prevalidated"
    challenge_type: str = "http-01"
    account_key_type: Literal["rsa2048", "ec256"] = "ec256"
    origin: str = "ACME_RA_UPSTREAM_"
    # authz_strategy dns-01: where the TXT records are written, and the waits.
    rfc2136: Rfc2136 | None = None
    dns_hook: Path | None = None
    dns_nameservers: tuple[tuple[str, int], ...] = ()
    dns_propagation_timeout_seconds: float = 120.0
    validation_timeout_seconds: float = 600.0

    def setting(self, name: str) -> str:
        """How the operator spells setting ``name`` (e.g. ``eab_hmac_key``) for this upstream."""
        if self.origin == "ACME_RA_UPSTREAM_":
            return self.origin + name.upper()
        return self.origin + name

    @property
    def has_eab(self) -> bool:
        return bool(self.eab_kid and self.eab_hmac_key)

    def describe(self) -> dict[str, Any]:
        """What operators may see of this upstream (``acme-ra upstream status``): the strategy
        and, for dns-01, where records are written. Never a secret."""
        dns_update: dict[str, str] | None = None
        if self.rfc2136 is not None:
            dns_update = {"kind": "rfc2136", "server": f"{self.rfc2136.host}:{self.rfc2136.port}",
                          "tsig_key_name": self.rfc2136.key_name}
        elif self.dns_hook is not None:
            dns_update = {"kind": "hook", "path": str(self.dns_hook)}
        return {"name": self.name, "authz_strategy": self.authz_strategy,
                "dns_update": dns_update if self.authz_strategy == "dns-01" else None}



class _FileRfc2136(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: str
    tsig_key_name: str
    tsig_algorithm: str = "hmac-sha256"
    tsig_secret_file: Path | None = None
    tsig_secret: SecretStr | None = None


class _DnsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rfc2136: _FileRfc2136 | None = None
    hook: Path | None = None


class _FileUpstream(BaseModel):
    model_config = ConfigDict(extra="forbid")
    directory_url: str
    eab_kid: str = ""
    eab_hmac_key: SecretStr | None = None
    eab_hmac_key_file: Path | None = None
    email: str = ""
    ca_bundle: Path | None = None
    cert_lifetime_days: int | None = Field(None, gt=0, le=3650)
    authz_strategy: str | None = None
    challenge_type: Literal["http-01", "dns-01", "tls-alpn-01"] | None = None
    account_key_type: Literal["rsa2048", "ec256"] | None = None
    dns_update: _DnsUpdate | None = None
    dns_nameservers: list[str] | None = None
    dns_propagation_timeout_seconds: float | None = Field(None, gt=0)
    validation_timeout_seconds: float | None = Field(None, gt=0)



def _hmac_key(given: SecretStr | None, file: Path | None, file_setting: str) -> SecretStr | None:
    """The EAB HMAC key: as given, else read from its file (``file_setting`` names it in errors)."""
    if given is None and file is not None:
        return read_secret(file, file_setting)
    return given


def from_env(settings: Settings) -> Upstream:
    hmac_key = _hmac_key(settings.upstream_eab_hmac_key, settings.upstream_eab_hmac_key_file,
                         "ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE")
    upstream = Upstream(
        name=DEFAULT_UPSTREAM,
        directory_url=settings.upstream_directory_url,
        eab_kid=settings.upstream_eab_kid.strip(),
        eab_hmac_key=hmac_key,
        email=settings.upstream_email.strip(),
        ca_bundle=settings.upstream_ca_bundle,
        cert_lifetime_days=settings.upstream_cert_lifetime_days,
        authz_strategy=_strategy(settings.upstream_authz_strategy, "ACME_RA_UPSTREAM_AUTHZ_STRATEGY"),
        challenge_type=settings.upstream_challenge_type,
        account_key_type=settings.upstream_account_key_type,
        origin="ACME_RA_UPSTREAM_",
        rfc2136=_env_rfc2136(settings),
        dns_hook=_hook(settings.upstream_dns_hook, "ACME_RA_UPSTREAM_DNS_HOOK"),
        dns_nameservers=_nameservers(settings.upstream_dns_nameservers, "ACME_RA_UPSTREAM_DNS_NAMESERVERS"),
        dns_propagation_timeout_seconds=settings.upstream_dns_propagation_timeout_seconds,
        validation_timeout_seconds=settings.upstream_validation_timeout_seconds,
    )
    _check(upstream)
    return upstream


def from_file(settings: Settings, name: str, fields: dict[str, Any], origin: str) -> Upstream:
    """``upstreams.<name>`` of type ``acme``; ``origin`` is ``<file>: upstreams.<name>.``."""
    entry = validated(_FileUpstream, fields, origin)
    hmac_key = _hmac_key(entry.eab_hmac_key, entry.eab_hmac_key_file, origin + "eab_hmac_key_file")
    upstream = Upstream(
        name=name,
        directory_url=entry.directory_url,
        eab_kid=entry.eab_kid.strip(),
        eab_hmac_key=hmac_key,
        email=entry.email.strip(),
        ca_bundle=entry.ca_bundle,
        cert_lifetime_days=entry.cert_lifetime_days,
        authz_strategy=_strategy(
            entry.authz_strategy or settings.upstream_authz_strategy,
            origin + "authz_strategy" if entry.authz_strategy else "ACME_RA_UPSTREAM_AUTHZ_STRATEGY",
        ),
        challenge_type=entry.challenge_type or settings.upstream_challenge_type,
        account_key_type=entry.account_key_type or settings.upstream_account_key_type,
        origin=origin,
        rfc2136=_file_rfc2136(entry, origin),
        dns_hook=_hook(entry.dns_update.hook if entry.dns_update else None, origin + "dns_update.hook"),
        dns_nameservers=_nameservers(entry.dns_nameservers, origin + "dns_nameservers")
        if entry.dns_nameservers is not None
        else _nameservers(settings.upstream_dns_nameservers, "ACME_RA_UPSTREAM_DNS_NAMESERVERS"),
        dns_propagation_timeout_seconds=entry.dns_propagation_timeout_seconds
        or settings.upstream_dns_propagation_timeout_seconds,
        validation_timeout_seconds=entry.validation_timeout_seconds or settings.upstream_validation_timeout_seconds,
    )
    _check(upstream)
    return upstream


def _strategy(value: str, name: str) -> str:
    value = value.strip().lower()
    if value in REPLACED_STRATEGIES:
        raise UpstreamConfigError(
            f"{PREFIX}{name}={value!r}: no longer a strategy; use {REPLACED_STRATEGIES[value]} (docs/upstream.md)"
        )
    if value not in AUTHZ_STRATEGIES:
        raise UpstreamConfigError(f"{PREFIX}{name}={value!r}: expected one of {', '.join(AUTHZ_STRATEGIES)}")
    return value


def _host_port(value: str, name: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``); a bad one is a one-line error naming ``name``."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        host, port = text, ""
    host = host.strip("[]")
    if not port and default_port is not None:
        port = str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UpstreamConfigError(f"{PREFIX}{name}={value!r}: expected host:port, e.g. 192.0.2.53:53")
    return host, int(port)


def _nameservers(value: str | list[str], name: str) -> tuple[tuple[str, int], ...]:
    items = value.split(",") if isinstance(value, str) else value
    servers = tuple(_host_port(item, name, 53) for item in items if item.strip())
    for host, _ in servers:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UpstreamConfigError(
                f"{PREFIX}{name}={value if isinstance(value, str) else ','.join(value)!r}: "
                f"{host!r} is not an IP address (nameservers are asked by address)"
            ) from None
    return servers


def _rfc2136(
    server: str,
    key_name: str,
    algorithm: str,
    secret: SecretStr | None,
    secret_file: Path | None,
    names: dict[str, str],
) -> Rfc2136:
    host, port = _host_port(server, names["server"], 53)
    if not key_name.strip():
        raise UpstreamConfigError(f"{PREFIX}{names['key_name']}: required with {names['server']}")
    algorithm = algorithm.strip().lower()
    if algorithm not in TSIG_ALGORITHMS:
        raise UpstreamConfigError(
            f"{PREFIX}{names['algorithm']}={algorithm!r}: expected one of {', '.join(TSIG_ALGORITHMS)}"
        )
    if secret is None and secret_file is not None:
        secret = read_secret(secret_file, names["secret_file"])
    if secret is None:
        raise UpstreamConfigError(f"{PREFIX}{names['secret_file']}: required with {names['server']}")
    text = secret.get_secret_value().strip()
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        raise UpstreamConfigError(
            f"{PREFIX}{names['secret_file']}: not a base64 TSIG secret (as tsig-keygen writes it)"
        )
    return Rfc2136(host, port, key_name.strip().rstrip(".") + ".", algorithm, SecretStr(text))


def _env_rfc2136(settings: Settings) -> Rfc2136 | None:
    if not settings.upstream_dns_rfc2136_server.strip():
        return None
    return _rfc2136(
        settings.upstream_dns_rfc2136_server,
        settings.upstream_dns_tsig_key_name,
        settings.upstream_dns_tsig_algorithm,
        settings.upstream_dns_tsig_secret,
        settings.upstream_dns_tsig_secret_file,
        {
            "server": "ACME_RA_UPSTREAM_DNS_RFC2136_SERVER",
            "key_name": "ACME_RA_UPSTREAM_DNS_TSIG_KEY_NAME",
            "algorithm": "ACME_RA_UPSTREAM_DNS_TSIG_ALGORITHM",
            "secret_file": "ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE",
        },
    )


def _file_rfc2136(entry: _FileUpstream, origin: str) -> Rfc2136 | None:
    if entry.dns_update is None or entry.dns_update.rfc2136 is None:
        return None
    update = entry.dns_update.rfc2136
    where = origin + "dns_update.rfc2136."
    return _rfc2136(
        update.server,
        update.tsig_key_name,
        update.tsig_algorithm,
        update.tsig_secret,
        update.tsig_secret_file,
        {
            "server": where + "server",
            "key_name": where + "tsig_key_name",
            "algorithm": where + "tsig_algorithm",
            "secret_file": where + "tsig_secret_file",
        },
    )


def _hook(path: Path | None, name: str) -> Path | None:
    if path is None or not str(path).strip():
        return None
    if not path.is_file() or not os.access(path, os.X_OK):
        raise UpstreamConfigError(f"{PREFIX}{name}={str(path)!r}: not an executable file")
    return path


def _check(upstream: Upstream) -> None:
    env = upstream.origin == "ACME_RA_UPSTREAM_"
    if upstream.authz_strategy == "dns-01" and upstream.rfc2136 is None and upstream.dns_hook is None:
        where = "ACME_RA_UPSTREAM_DNS_RFC2136_SERVER or _DNS_HOOK" if env else upstream.origin + "dns_update"
        raise UpstreamConfigError(f"{PREFIX}{where}: required with {upstream.setting('authz_strategy')}=dns-01")
    if upstream.rfc2136 is not None and upstream.dns_hook is not None:
        where = "ACME_RA_UPSTREAM_DNS_HOOK" if env else upstream.origin + "dns_update.hook"
        raise UpstreamConfigError(f"{PREFIX}{where}: either RFC 2136 or a hook publishes the records, not both")
    parts = urlsplit(upstream.directory_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UpstreamConfigError(
            f"{PREFIX}{upstream.setting('directory_url')}={upstream.directory_url!r}: "
            "must be the upstream's ACME directory URL (https://...)"
        )
    if bool(upstream.eab_kid) != bool(upstream.eab_hmac_key):
        missing = "eab_hmac_key" if upstream.eab_kid else "eab_kid"
        raise UpstreamConfigError(f"{PREFIX}{upstream.setting(missing)}: the EAB key id and HMAC key go together")
    if upstream.eab_hmac_key is not None:
        text = upstream.eab_hmac_key.get_secret_value().strip()
        try:
            decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            decoded = b""
        if not decoded:
            raise UpstreamConfigError(
                f"{PREFIX}{upstream.setting('eab_hmac_key')}: not a base64url HMAC key (as the CA gave it)"
            )
    if upstream.ca_bundle is not None and not upstream.ca_bundle.is_file():
        raise UpstreamConfigError(f"{PREFIX}{upstream.setting('ca_bundle')}: {upstream.ca_bundle} does not exist")
    if upstream.email and ("@" not in upstream.email or upstream.email.startswith("mailto:")):
        raise UpstreamConfigError(
            f"{PREFIX}{upstream.setting('email')}={upstream.email!r}: expected an address such as pki@example.org"
        )

