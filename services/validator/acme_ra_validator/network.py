"""What the validator may connect to: the guard against server-side request forgery.

The validator connects to names chosen by ACME clients. It resolves each name itself, checks every
address against the network policy, and dials only the addresses that pass (never a name, so no
second resolution can swap in another address). By default the special-purpose ranges of the IANA
registries are refused: loopback, private (RFC 1918, ULA), link-local (cloud metadata at
169.254.169.254), CGNAT, multicast, unspecified, reserved and documentation ranges.

``ACME_RA_VALIDATION_ALLOW_NETWORKS`` carves exceptions out of that default (labs allow loopback);
``ACME_RA_VALIDATION_DENY_NETWORKS`` adds ranges and always wins, even over an allowed range.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TypeAlias

from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.resolver import LookupFailed, NameNotFound, NameResolver

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused unless ACME_RA_VALIDATION_ALLOW_NETWORKS allows them (IANA IPv4/IPv6 special-purpose
# address registries, the same list Boulder refuses).
DEFAULT_DENIED_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network", unspecified
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space, CGNAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata services
    "172.16.0.0/12",  # private (RFC 1918)
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation (TEST-NET-1)
    "192.88.99.0/24",  # 6to4 relay anycast
    "192.168.0.0/16",  # private (RFC 1918)
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation (TEST-NET-2)
    "203.0.113.0/24",  # documentation (TEST-NET-3)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, limited broadcast
    "::/128",  # unspecified
    "::1/128",  # loopback
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "2001::/23",  # IETF protocol assignments (Teredo, ORCHIDv2, ...)
    "2001:db8::/32",  # documentation
    "2002::/16",  # 6to4
    "fc00::/7",  # unique local addresses
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)
# IPv4 addresses embedded in IPv6 ones are judged as the IPv4 address they carry.
NAT64_WELL_KNOWN_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """A comma list of CIDRs (a bare address is a /32 or /128). Raises ValueError."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in value.split(",") if item.strip())


def _unwrapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64_WELL_KNOWN_PREFIX:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


@dataclass(frozen=True)
class NetworkPolicy:
    """Which addresses the validator may connect to."""

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    default_deny: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_DENIED_NETWORKS)

    @classmethod
    def from_lists(cls, allow: str = "", deny: str = "") -> NetworkPolicy:
        """From ``ACME_RA_VALIDATION_ALLOW_NETWORKS`` / ``_DENY_NETWORKS`` values."""
        return cls(allow=parse_networks(allow), deny=parse_networks(deny))

    def permits(self, address: str) -> bool:
        ip = _unwrapped(ipaddress.ip_address(address))
        if any(ip in network for network in self.deny):
            return False
        if any(ip in network for network in self.allow):
            return True
        return not any(ip in network for network in self.default_deny)

    def refusal(self, address: str) -> ValidationFailure:
        return ValidationFailure(
            "connection",
            f"{address} is in a network the validator may not reach (ACME_RA_VALIDATION_DENY_NETWORKS)",
        )


async def addresses_to_dial(resolver: NameResolver, policy: NetworkPolicy, host: str) -> list[str]:
    """The addresses of ``host`` (an IP literal stands for itself) the policy lets the validator
    reach, in the resolver's order. Raises ValidationFailure: ``dns`` when the name does not
    resolve, ``connection`` when every address is refused."""
    try:
        addresses = await resolver.addresses(host)
    except NameNotFound as error:
        raise ValidationFailure("dns", f"No valid IP addresses found for {host} ({error.reason})") from None
    except LookupFailed as error:
        raise ValidationFailure("dns", f"DNS problem: {error.reason} looking up A/AAAA for {host}") from None
    if not addresses:
        raise ValidationFailure("dns", f"No valid IP addresses found for {host}")
    allowed = [address for address in addresses if policy.permits(address)]
    if not allowed:
        raise policy.refusal(addresses[0])
    return allowed
