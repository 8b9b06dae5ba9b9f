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

An upstream's ``type`` says what it is: ``acme`` (when absent; the keys above, read by
``upstream/acme_config.py``), ``vault``
(OpenBao / Vault PKI, ``upstream/vault.py``), ``command`` (an external program,
``upstream/command.py``) or ``lab`` (the lab CA, ``upstream/lab.py``); each module reads its keys.

Other top-level keys belong to other parts of acme-ra and are ignored here. Every problem is
reported as one line naming the variable or the file and the key.
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field

from acme_ra.config import Settings
from acme_ra_signer.upstream.acme_config import DEFAULT_UPSTREAM, Upstream, from_env
from acme_ra_signer.upstream.acme_config import from_file as acme_from_file
from acme_ra_signer.upstream.config_errors import PREFIX, UpstreamConfigError, read_secret, validated

if TYPE_CHECKING:
    from acme_ra_signer.upstream.base import NamedUpstream

# What other modules import from here.
__all__ = [
    "DEFAULT_UPSTREAM",
    "PREFIX",
    "AnyUpstream",
    "Catalog",
    "Upstream",
    "UpstreamConfigError",
    "load_catalog",
    "read_secret",
    "sealing_secret",
    "validated",
]


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
        upstreams[DEFAULT_UPSTREAM] = from_env(settings)
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



def _typed(settings: Settings, name: str, fields: dict[str, Any], where: str) -> AnyUpstream:
    """``upstreams.<name>`` read by the module of its ``type``."""
    origin = f"{where}: upstreams.{name}."
    kind = fields.get("type", "acme")
    rest = {key: value for key, value in fields.items() if key != "type"}
    if kind == "acme":
        return acme_from_file(settings, name, rest, origin)
    if kind not in UPSTREAM_TYPES:
        raise UpstreamConfigError(f"{PREFIX}{origin}type={kind!r}: expected one of {', '.join(UPSTREAM_TYPES)}")
    module = importlib.import_module(f"acme_ra_signer.upstream.{kind}")
    config: OtherUpstream = module.from_file(settings, name, rest, origin)
    return config



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
    return validated(_File, data, f"{where}: ")
