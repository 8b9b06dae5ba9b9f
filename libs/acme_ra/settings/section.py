"""The base of every section of the settings class (``acme_ra.config.Settings``) and the
parsers the sections share."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ACME_RA_"


class SettingsSection(BaseSettings):
    """One part of ``Settings``: its fields, their checks and what is derived from them. The
    comment above a field is its documentation (docs/configuration.md, ``acme_ra_admin.configdoc``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False)


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


# dns-persist-01 (draft-ietf-acme-dns-persist-02 §3.1): a challenge names 1 to 10 issuer domain names.
MAX_ISSUER_DOMAIN_NAMES = 10


def normal_issuer_domain(name: str) -> str:
    """An issuer domain name in the draft's form: A-labels (IDNA), lowercase, no final dot; ""
    when it cannot be one."""
    try:
        return name.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return ""


def http_base(listen: str) -> str:
    """The http:// base URL that reaches a listener configured as ``listen`` (``host:port``) from
    this machine: a wildcard address is reached on loopback."""
    host, port = parse_host_port(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
