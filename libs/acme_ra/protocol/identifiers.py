"""ACME identifiers (RFC 8555 §7.1.4, §7.1.3 wildcards): parsing and normalisation.

Failures are returned per identifier so that newOrder can answer one subproblem each.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import idna
from publicsuffixlist import PublicSuffixList

MAX_DNS_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# Most identifiers one order may carry.
MAX_IDENTIFIERS_PER_ORDER = 100

_LDH_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_psl = PublicSuffixList()


def is_public_suffix(name: str) -> bool:
    """``co.uk``, ``org``, ``github.io``: names nobody can prove they control for others."""
    return bool(_psl.is_public(name))


def registered_domain(name: str) -> str:
    """The name's registered domain (public suffix + one label), or the name itself."""
    base = name.removeprefix("*.")
    return _psl.privatesuffix(base) or base


@dataclass(frozen=True, slots=True)
class Identifier:
    type: str
    value: str  # normalised; wildcards keep their "*." here

    @property
    def wildcard(self) -> bool:
        return self.type == "dns" and self.value.startswith("*.")

    @property
    def base_value(self) -> str:
        """The name an authorization is for: without the leading "*."."""
        return self.value[2:] if self.wildcard else self.value

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}


class IdentifierError(Exception):
    def __init__(self, type_: str, detail: str, identifier: dict[str, Any]) -> None:
        super().__init__(detail)
        self.type = type_
        self.detail = detail
        self.identifier = identifier

    def to_data(self) -> dict[str, Any]:
        return {"type": self.type, "detail": self.detail, "identifier": self.identifier}


def normalize_dns_name(raw: str) -> str:
    """Lowercase and check a DNS name; a leftmost "*." wildcard is kept. Raises ValueError."""
    name = raw.lower()
    if name.endswith("."):
        raise ValueError("DNS name must not end with a dot")
    base = name.removeprefix("*.")
    if not base:
        raise ValueError("DNS name is empty")
    if len(name) > MAX_DNS_NAME_LENGTH:
        raise ValueError(f"DNS name is longer than {MAX_DNS_NAME_LENGTH} characters")
    if "*" in base:
        raise ValueError("a wildcard is only allowed as the whole leftmost label")
    try:
        ipaddress.ip_address(base)
    except ValueError:
        pass
    else:
        raise ValueError("DNS identifier with an IP address value")
    labels = base.split(".")
    if name.startswith("*.") and len(labels) < 2:
        raise ValueError("wildcard directly under a top-level domain")
    for label in labels:
        if not label:
            raise ValueError("DNS name has an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise ValueError(f"DNS label longer than {MAX_LABEL_LENGTH} characters")
        if not _LDH_LABEL.match(label):
            raise ValueError(f"DNS label {label!r} has characters other than letters, digits and '-'")
        if label[2:4] == "--" and not label.startswith("xn--"):
            raise ValueError(f"DNS label {label!r} has '--' in positions 3 and 4")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise ValueError(f"DNS label {label!r} is not valid IDNA") from None
    if labels[-1].isdigit():
        raise ValueError("DNS name has an all-numeric top-level label")
    if is_public_suffix(base):
        raise ValueError("DNS name is a public suffix")
    return name


def normalize_ip(raw: str) -> str:
    """RFC 8738: dotted-quad IPv4 or RFC 5952 IPv6, returned in canonical form."""
    if "%" in raw or "/" in raw:
        raise ValueError("IP identifier must be a bare address (no zone, no prefix)")
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        raise ValueError("IPv4-mapped IPv6 addresses are not accepted; use the IPv4 address")
    return address.compressed


def parse_identifier(raw: Any, allowed_types: frozenset[str] = frozenset({"dns", "ip"})) -> Identifier:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or not isinstance(raw.get("value"), str):
        raise IdentifierError("malformed", "identifier must be an object with string type and value", {})
    shown = {"type": raw["type"], "value": raw["value"][:300]}
    if raw["type"] not in allowed_types:
        raise IdentifierError("unsupportedIdentifier", f"identifier type {raw['type']!r} is not supported", shown)
    if raw["type"] == "ip":
        try:
            return Identifier("ip", normalize_ip(raw["value"]))
        except ValueError as error:
            raise IdentifierError("malformed", f"{raw['value'][:300]!r} is not an IP address: {error}", shown) from None
    try:
        value = normalize_dns_name(raw["value"])
    except ValueError as error:
        raise IdentifierError("rejectedIdentifier", f"{raw['value'][:300]!r}: {error}", shown) from None
    return Identifier("dns", value)
