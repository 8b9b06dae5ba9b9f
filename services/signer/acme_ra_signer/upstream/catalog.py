"""Named upstream ACME CAs, and which one serves an order.

One upstream needs only environment variables (``ACME_RA_UPSTREAM_DIRECTORY_URL``, ...): it is
named ``default``. Several live in ``ACME_RA_CONFIG_FILE`` (YAML or TOML)::

    upstreams:
      incommon-rsa:
        directory_url: https://acme.sectigo.com/v2/InCommonRSAOV
        eab_kid: kid-from-sectigo
        eab_hmac_key_file: /run/secrets/incommon-rsa-hmac   # or eab_hmac_key: ...
        email: pki@example.edu
        cert_lifetime_days: 365          # optional; also ca_bundle, challenge_type,
        authz_strategy: prevalidated     # account_key_type; or http-01 (the frontends serve the
        #                                  key authorizations: ACME_RA_UPSTREAM_HTTP01_LISTEN), or dns-01 with:
        # dns_update: {rfc2136: {server: 192.0.2.53:53, tsig_key_name: acme-ra,
        #              tsig_algorithm: hmac-sha256, tsig_secret_file: /run/secrets/tsig}}
        # dns_nameservers: [192.0.2.53:53], dns_propagation_timeout_seconds: 120,
        # validation_timeout_seconds: 600
      incommon-ecc:
        directory_url: https://acme.sectigo.com/v2/InCommonECCOV
        eab_kid: other-kid
        eab_hmac_key_file: /run/secrets/incommon-ecc-hmac
    default_upstream: incommon-rsa       # optional when there is one upstream (or "default")
    profiles:                            # an order's ACME profile picks its upstream ...
      tlsserver: {upstream: incommon-rsa}
      tlsserver-ecc: {upstreams: [incommon-ecc, incommon-rsa]}   # ordered: failover
    provisioners:                        # ... else its provisioner, else default_upstream
      ecc: {upstream: incommon-ecc}

Each route names one upstream (``upstream: a``, ``default_upstream: a``) or an ordered list
(``upstreams: [a, b]``, ``default_upstreams: [a, b]``): an order goes to the first whose circuit
breaker is not open, and moves on while nothing was finalized (``upstream/breaker.py``,
``AcmeDriver.issue``). One entry gives one form or the other, not both.

An upstream's ``type`` says what it is: ``acme`` (when absent; the keys above), ``vault``
(OpenBao / Vault PKI, ``upstream/vault.py``), ``command`` (an external program,
``upstream/command.py``) or ``lab`` (the lab CA, ``upstream/lab.py``); each module reads its keys.

Other top-level keys belong to other parts of acme-ra and are ignored here. Every problem is
reported as one line naming the variable or the file and the key.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from acme_ra.config import Settings

if TYPE_CHECKING:
    from acme_ra_signer.upstream.base import NamedUpstream

DEFAULT_UPSTREAM = "default"
PREFIX = "acme-ra: invalid configuration: "


class UpstreamConfigError(Exception):
    """The upstream configuration is unusable; ``str()`` is one line for the operator."""


# The strategies of authz_strategy; the values that were replaced, and by what.
AUTHZ_STRATEGIES = ("prevalidated", "dns-01", "http-01", "dns-persist-01")  # dns-persist-01: dns_persist.py
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


# upstreams.<name>.type: the kinds of back end; "acme" when absent. The others are read by the
# module of that name in this package (its from_file), and built by their config's build().
UPSTREAM_TYPES = ("acme", "vault", "command", "lab")


class OtherUpstream(Protocol):
    """The configuration of a non-ACME upstream (``vault.VaultConfig``, ...)."""

    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def build(self, *, http_timeout: float, proxy: str | None) -> NamedUpstream: ...


AnyUpstream = Upstream | OtherUpstream


@dataclass(frozen=True)
class Catalog:
    """The configured upstreams and the rules that pick one for an order."""

    upstreams: dict[str, AnyUpstream]
    default: str
    # Each route is an ordered list of upstream names: the first serves, the next take over
    # while the ones before are unavailable (failover).
    by_profile: dict[str, tuple[str, ...]] = field(default_factory=dict)
    by_provisioner: dict[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: tuple[str, ...] = ()

    def candidates(self, provisioner: str | None = None, profile: str | None = None) -> tuple[str, ...]:
        """The upstreams that may serve an order, in order: the order's profile decides first,
        then its provisioner, then the default list."""
        if profile and profile in self.by_profile:
            return self.by_profile[profile]
        if provisioner and provisioner in self.by_provisioner:
            return self.by_provisioner[provisioner]
        return self.defaults or (self.default,)

    def select(self, provisioner: str | None = None, profile: str | None = None) -> AnyUpstream:
        """The first of the order's candidates."""
        return self.upstreams[self.candidates(provisioner, profile)[0]]


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


class _Route(BaseModel):
    model_config = ConfigDict(extra="allow")  # profiles/provisioners may carry other settings
    upstream: str | None = None
    upstreams: list[str] | None = None


class _File(BaseModel):
    model_config = ConfigDict(extra="ignore")
    upstreams: dict[str, dict[str, Any]] = Field(default_factory=dict)  # by type: _typed
    default_upstream: str | None = None
    default_upstreams: list[str] | None = None
    profiles: dict[str, _Route | str] = Field(default_factory=dict)
    provisioners: dict[str, _Route | str] = Field(default_factory=dict)


def load_catalog(settings: Settings) -> Catalog:
    """The upstreams of an ``ACME_RA_UPSTREAM=acme`` signer; raises UpstreamConfigError."""
    upstreams: dict[str, AnyUpstream] = {}
    if settings.upstream_directory_url:
        upstreams[DEFAULT_UPSTREAM] = _from_env(settings)
    document = _read_file(settings.config_file) if settings.config_file else _File()
    where = f"ACME_RA_CONFIG_FILE ({settings.config_file})"
    for name, entry in document.upstreams.items():
        if name in upstreams:
            raise UpstreamConfigError(
                f"{PREFIX}{where}: upstreams.{name}: the name {name!r} is taken by ACME_RA_UPSTREAM_DIRECTORY_URL"
            )
        if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 64:
            raise UpstreamConfigError(f"{PREFIX}{where}: upstreams.{name}: names are letters, digits, '-' and '_'")
        upstreams[name] = _typed(settings, name, entry, where)
    if not upstreams:
        raise UpstreamConfigError(
            f"{PREFIX}ACME_RA_UPSTREAM_DIRECTORY_URL: required when ACME_RA_UPSTREAM=acme "
            "(or declare upstreams in ACME_RA_CONFIG_FILE)"
        )
    defaults = _route(upstreams, where, "default_upstream", document.default_upstream, document.default_upstreams)
    if not defaults:
        if DEFAULT_UPSTREAM in upstreams:
            defaults = (DEFAULT_UPSTREAM,)
        elif len(upstreams) == 1:
            defaults = (next(iter(upstreams)),)
        else:
            raise UpstreamConfigError(
                f"{PREFIX}{where}: default_upstream: required with several upstreams ({', '.join(sorted(upstreams))})"
            )
    routes: dict[str, dict[str, tuple[str, ...]]] = {}
    for section in ("profiles", "provisioners"):
        routes[section] = {}
        for key, route in getattr(document, section).items():
            if isinstance(route, str):
                targets = _route(upstreams, where, f"{section}.{key}.upstream", route, None)
            else:
                targets = _route(upstreams, where, f"{section}.{key}.upstream", route.upstream, route.upstreams)
            if targets:
                routes[section][key] = targets
    return Catalog(upstreams, defaults[0], routes["profiles"], routes["provisioners"], defaults)


def _route(
    upstreams: dict[str, AnyUpstream], where: str, key: str, single: str | None, ordered: list[str] | None
) -> tuple[str, ...]:
    """One route's upstreams in order, from ``key: a`` or ``keys: [a, b]`` (``key`` is the
    single form's name, e.g. ``profiles.p.upstream``); () when neither is given."""
    plural = key + "s"
    if single is not None and ordered is not None:
        raise UpstreamConfigError(f"{PREFIX}{where}: {plural}: give {key} or {plural}, not both")
    if ordered is not None:
        if not ordered:
            raise UpstreamConfigError(f"{PREFIX}{where}: {plural}: names at least one upstream")
        names = tuple(ordered)
    elif single is not None:
        names = (single,)
    else:
        return ()
    for index, name in enumerate(names):
        setting = f"{plural}[{index}]" if ordered is not None else key
        if name not in upstreams:
            raise UpstreamConfigError(f"{PREFIX}{where}: {setting}: no upstream named {name!r}")
        if name in names[:index]:
            raise UpstreamConfigError(f"{PREFIX}{where}: {setting}: {name!r} is listed twice")
    return names


def sealing_secret(settings: Settings) -> bytes:
    """The secret that seals the upstream account keys: required, never generated, with an
    ACME upstream (every signer replica must hold the same one)."""
    if settings.secret_key is None and settings.secret_key_file is None:
        raise UpstreamConfigError(
            f"{PREFIX}ACME_RA_SECRET_KEY: required when ACME_RA_UPSTREAM=acme (it seals the upstream "
            "account key in the database); set it, or ACME_RA_SECRET_KEY_FILE, to the same value on every signer"
        )
    secret = settings.sealing_secret()
    if len(secret) < 16:
        name = "ACME_RA_SECRET_KEY" if settings.secret_key is not None else "ACME_RA_SECRET_KEY_FILE"
        raise UpstreamConfigError(f"{PREFIX}{name}: must be at least 16 characters (e.g. openssl rand -base64 32)")
    return secret


def _from_env(settings: Settings) -> Upstream:
    hmac_key = settings.upstream_eab_hmac_key
    if hmac_key is None and settings.upstream_eab_hmac_key_file is not None:
        hmac_key = _read_secret(settings.upstream_eab_hmac_key_file, "ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE")
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


def _typed(settings: Settings, name: str, fields: dict[str, Any], where: str) -> AnyUpstream:
    """``upstreams.<name>`` read by the module of its ``type``."""
    origin = f"{where}: upstreams.{name}."
    kind = fields.get("type", "acme")
    rest = {key: value for key, value in fields.items() if key != "type"}
    if kind == "acme":
        return _from_file(settings, name, validated(_FileUpstream, rest, origin))
    if kind not in UPSTREAM_TYPES:
        raise UpstreamConfigError(f"{PREFIX}{origin}type={kind!r}: expected one of {', '.join(UPSTREAM_TYPES)}")
    module = importlib.import_module(f"acme_ra_signer.upstream.{kind}")
    config: OtherUpstream = module.from_file(settings, name, rest, origin)
    return config


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], fields: dict[str, Any], origin: str) -> Model:
    """``fields`` as ``model``; the first problem as one line naming the file and the key."""
    try:
        return model.model_validate(fields)
    except ValidationError as invalid:
        details = invalid.errors()[0]
        loc = ".".join(str(part) for part in details.get("loc", ()))
        raise UpstreamConfigError(f"{PREFIX}{origin}{loc}: {details.get('msg', 'invalid')}") from None


def _from_file(settings: Settings, name: str, entry: _FileUpstream) -> Upstream:
    origin = f"ACME_RA_CONFIG_FILE ({settings.config_file}): upstreams.{name}."
    hmac_key = entry.eab_hmac_key
    if hmac_key is None and entry.eab_hmac_key_file is not None:
        hmac_key = _read_secret(entry.eab_hmac_key_file, origin + "eab_hmac_key_file")
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
        secret = _read_secret(secret_file, names["secret_file"])
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


def _read_secret(path: Path, name: str) -> SecretStr:
    try:
        return SecretStr(path.read_text().strip())
    except OSError as error:
        raise UpstreamConfigError(f"{PREFIX}{name}: cannot read {path}: {error.strerror}") from None


read_secret = _read_secret


def _read_file(path: Path) -> _File:
    where = f"ACME_RA_CONFIG_FILE ({path})"
    try:
        text = path.read_text()
    except OSError as error:
        raise UpstreamConfigError(f"{PREFIX}{where}: cannot read it: {error.strerror}") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UpstreamConfigError(
            f"{PREFIX}{where}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML'}: {first}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UpstreamConfigError(f"{PREFIX}{where}: expected a mapping at the top level")
    try:
        return _File.model_validate(data)
    except ValidationError as invalid:
        details = invalid.errors()[0]
        loc = ".".join(str(part) for part in details.get("loc", ()))
        raise UpstreamConfigError(f"{PREFIX}{where}: {loc}: {details.get('msg', 'invalid')}") from None
