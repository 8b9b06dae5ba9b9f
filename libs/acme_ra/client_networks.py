"""Client networks: which client addresses may use the ACME API, and what each may request.

Two sources, used together (a network listed in both is a configuration error):

- ``ACME_RA_POLICY_CLIENT_NETWORKS``: a comma list of CIDRs whose clients may request any
  identifier the global policy (``ACME_RA_POLICY_*``) allows;
- ``client_networks`` in ``ACME_RA_CONFIG_FILE`` (YAML or TOML), a CIDR → identifier rules mapping
  (the rules of :mod:`acme_ra.protocol.policy`: ``name``, ``.suffix``, CIDR)::

      client_networks:
        10.1.0.0/16: [.physics.example.edu]          # only names under physics.example.edu
        10.2.0.0/16: ".chem.example.edu, 10.2.0.0/16" # a comma string works too
        192.0.2.0/24: []                              # any name (also: null, "")
        2001:db8:5::/48:                              # the full form
          allow: [.example.edu]
          deny: [secret.example.edu]
          wildcards: false

  or a plain list of CIDRs (each may request any name): ``client_networks: [10.0.0.0/8]``.

Neither set (or both empty): every address may use the API. Otherwise an address outside every
network is refused everything under ``/acme/``, and the most specific network holding an address
(the longest prefix) decides which identifiers it may order, on top of the global and EAB
policies. The frontend reloads the file when it changes (acme_ra_frontend.client_networks).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acme_ra.config import Settings
from acme_ra.protocol.identifiers import Identifier
from acme_ra.protocol.policy import Policy, parse_rules

ENV_NAME = "ACME_RA_POLICY_CLIENT_NETWORKS"
FILE_KEY = "client_networks"
PREFIX = "acme-ra: invalid configuration: "

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientNetworksError(Exception):
    """The client-network rules are unusable; ``str()`` is one line for the operator."""



def client_ip(address: str | Address) -> Address | None:
    """A client's address as an IP address (None when it is not one); an IPv4-mapped IPv6
    address (``::ffff:10.1.2.3``, a dual-stack socket's view of an IPv4 client) is its IPv4
    address, and an IPv6 zone (``%eth0``) is dropped."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip

@dataclass(frozen=True)
class ClientNetwork:
    """One network and the identifier rules its clients may request (no allow rule: any)."""

    network: Network
    policy: Policy
    origin: str  # ENV_NAME or "ACME_RA_CONFIG_FILE"

    def refusal(self, identifier: Identifier) -> str | None:
        return self.policy.refusal(identifier, whose=f"clients in {self.network}")

    def to_data(self) -> dict[str, Any]:
        return {"network": str(self.network), **self.policy.to_data(), "origin": self.origin}


@dataclass(frozen=True)
class ClientNetworks:
    """The rules in force. ``restricted`` False: every address may use the API."""

    networks: tuple[ClientNetwork, ...] = ()
    # Per IP version: prefix lengths, longest first, and network address (int) → entry per length.
    _index: dict[int, list[tuple[int, dict[int, ClientNetwork]]]] = field(
        default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_length: dict[tuple[int, int], dict[int, ClientNetwork]] = {}
        for entry in self.networks:
            key = (entry.network.version, entry.network.prefixlen)
            by_length.setdefault(key, {})[int(entry.network.network_address)] = entry
        for (version, length), table in sorted(by_length.items(), key=lambda item: -item[0][1]):
            self._index.setdefault(version, []).append((length, table))

    @property
    def restricted(self) -> bool:
        return bool(self.networks)

    def match(self, address: str | Address) -> ClientNetwork | None:
        """The most specific network holding ``address``; None when none does (or it is not an
        IP address). An IPv4-mapped IPv6 address (``::ffff:10.1.2.3``) is its IPv4 address."""
        ip = client_ip(address)
        if ip is None:
            return None
        bits = ip.max_prefixlen
        value = int(ip)
        for length, table in self._index.get(ip.version, ()):
            entry = table.get(value >> (bits - length) << (bits - length))
            if entry is not None:
                return entry
        return None

    def to_data(self) -> list[dict[str, Any]]:
        return [entry.to_data() for entry in sorted(
            self.networks, key=lambda e: (e.network.version, e.network.network_address, e.network.prefixlen))]


def parse_network(text: Any, where: str) -> Network:
    if not isinstance(text, str) or not text.strip():
        raise ClientNetworksError(f"{PREFIX}{where}: expected a CIDR such as 10.1.0.0/16, got {text!r}")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ClientNetworksError(f"{PREFIX}{where}: {text.strip()!r} is not a CIDR such as 10.1.0.0/16") from None


def _rules(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list) and not all(isinstance(item, str) for item in value):
        raise ClientNetworksError(f"{PREFIX}{where}: identifier rules are strings (name, .suffix or CIDR)")
    if not isinstance(value, (str, list)):
        raise ClientNetworksError(f"{PREFIX}{where}: expected a list of identifier rules, got {value!r}")
    try:
        return parse_rules(value)
    except ValueError as error:
        raise ClientNetworksError(f"{PREFIX}{where}: bad identifier rule: {error}") from None


def _policy(value: Any, where: str) -> Policy:
    """Identifier rules: a list or comma string (allow rules), null (any), or a mapping."""
    if not isinstance(value, dict):
        return Policy(allow=_rules(value, where))
    unknown = set(value) - {"allow", "deny", "wildcards"}
    if unknown:
        raise ClientNetworksError(f"{PREFIX}{where}: unknown key {min(unknown)!r} (allow, deny, wildcards)")
    wildcards = value.get("wildcards", True)
    if not isinstance(wildcards, bool):
        raise ClientNetworksError(f"{PREFIX}{where}.wildcards: expected true or false")
    return Policy(_rules(value.get("allow"), f"{where}.allow"), _rules(value.get("deny"), f"{where}.deny"), wildcards)


def networks_from_env(text: str) -> list[ClientNetwork]:
    """``ACME_RA_POLICY_CLIENT_NETWORKS``: CIDRs whose clients may request any name."""
    return [ClientNetwork(parse_network(item, ENV_NAME), Policy(), ENV_NAME)
            for item in text.split(",") if item.strip()]


def networks_from_document(data: Any, where: str) -> list[ClientNetwork]:
    """The ``client_networks`` value of a configuration file (``where`` names it in errors)."""
    origin = "ACME_RA_CONFIG_FILE"
    where = f"{where}: {FILE_KEY}"
    if data is None:
        return []
    if isinstance(data, list):
        return [ClientNetwork(parse_network(item, f"{where}[{i}]"), Policy(), origin) for i, item in enumerate(data)]
    if not isinstance(data, dict):
        raise ClientNetworksError(
            f"{PREFIX}{where}: expected a mapping of CIDR to identifier rules, or a list of CIDRs")
    return [ClientNetwork(parse_network(str(key), f"{where}.{key}"), _policy(value, f"{where}.{key}"), origin)
            for key, value in data.items()]


def read_document(path: Path) -> Any:
    """The ``client_networks`` section of the YAML or TOML file at ``path`` (None when absent)."""
    where = f"ACME_RA_CONFIG_FILE ({path})"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ClientNetworksError(f"{PREFIX}{where}: cannot read it: {reason}") from None
    toml = path.suffix.lower() == ".toml"
    try:
        data: Any = tomllib.loads(text) if toml else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ClientNetworksError(f"{PREFIX}{where}: not valid {'TOML' if toml else 'YAML'}: {first}") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ClientNetworksError(f"{PREFIX}{where}: expected a mapping at the top level")
    return data.get(FILE_KEY)


def build(entries: list[ClientNetwork], where: str = ENV_NAME) -> ClientNetworks:
    """The rules of ``entries``; a network listed twice is an error (``where``: the file's name)."""
    seen: dict[Network, ClientNetwork] = {}
    for entry in entries:
        first = seen.get(entry.network)
        if first is not None:
            also = "twice" if first.origin == entry.origin else f"in {first.origin} too"
            place = ENV_NAME if entry.origin == ENV_NAME else f"{where}: {FILE_KEY}"
            raise ClientNetworksError(f"{PREFIX}{place}: {entry.network} is listed {also}")
        seen[entry.network] = entry
    return ClientNetworks(tuple(entries))


def load_client_networks(settings: Settings) -> ClientNetworks:
    """The rules of the environment and the configuration file; raises ClientNetworksError."""
    entries = networks_from_env(settings.policy_client_networks)
    where = f"ACME_RA_CONFIG_FILE ({settings.config_file})"
    if settings.config_file is not None:
        entries += networks_from_document(read_document(settings.config_file), where)
    return build(entries, where)


def file_signature(path: Path | None) -> tuple[int, int, int] | None:
    """What changes when the file is rewritten or replaced (a ConfigMap's symlink swap too)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
