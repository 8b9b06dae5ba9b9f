"""Name resolution for validation: A/AAAA (http-01, tls-alpn-01), TXT (dns-01) and CAA.

With ``ACME_RA_DNS_RESOLVERS`` set, every query goes to those servers (dnspython, no cache).
Without it, addresses come from ``getaddrinfo`` (so /etc/hosts works) and TXT records from the
system's resolvers. ``localhost`` and names under ``.localhost`` never cause a query
(RFC 6761 §6.3): addresses are the loopback ones, every other record type is absent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import dns.reversename

from acme_ra import telemetry

# Total time one DNS lookup may take, retries included (seconds).
DNS_LIFETIME_SECONDS = 5.0
# Time one query to one server may take before dnspython retries (seconds).
DNS_QUERY_TIMEOUT_SECONDS = 2.0
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")

_NOT_FOUND_GAI_ERRORS = {
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if code
}


class ResolutionError(Exception):
    """A lookup that gave no usable answer; ``reason`` is short and safe to show a client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NameNotFound(ResolutionError):
    """NXDOMAIN, or the name exists without records of the type asked for."""


class LookupFailed(ResolutionError):
    """SERVFAIL, timeout, refused: the answer is unknown."""


class CaaRecord(NamedTuple):
    """One CAA resource record (RFC 8659 §4.1): the tag lowercased, the value as sent."""

    flags: int
    tag: str
    value: str


def is_localhost_name(name: str) -> bool:
    name = name.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def reverse_name(address: str) -> str:
    """``x.x.x.x.in-addr.arpa`` / nibble ``ip6.arpa`` without the final dot (RFC 8738 §6)."""
    return dns.reversename.from_address(address).to_text(omit_final_dot=True)


class NameResolver:
    """One per process. ``nameservers`` are (ip, port) pairs; empty means the system's."""

    def __init__(self, nameservers: list[tuple[str, int]], lifetime: float = DNS_LIFETIME_SECONDS) -> None:
        self._lifetime = lifetime
        self._configured = bool(nameservers)
        self._dns: dns.asyncresolver.Resolver | None = None
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
            self._dns = self._tune(resolver)

    def _tune(self, resolver: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
        resolver.lifetime = self._lifetime
        resolver.timeout = min(DNS_QUERY_TIMEOUT_SECONDS, self._lifetime)
        resolver.cache = None
        return resolver

    def _dns_resolver(self) -> dns.asyncresolver.Resolver:
        """The configured resolver, or the system's (read from resolv.conf on first use)."""
        if self._dns is None:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                raise LookupFailed("no DNS resolver is configured on the validator") from None
            self._dns = self._tune(resolver)
        return self._dns

    async def addresses(self, name: str) -> list[str]:
        """IP addresses to connect to for ``name``, IPv4 first, without duplicates."""
        try:
            return [str(ipaddress.ip_address(name))]
        except ValueError:
            pass
        if is_localhost_name(name):
            return list(LOOPBACK_ADDRESSES)
        with telemetry.span("validator.dns_lookup", **{"dns.question.name": name, "dns.question.type": "A/AAAA"}):
            if self._configured:
                found = await self._query_addresses(name)
            else:
                found = await self._getaddrinfo(name)
        unique = list(dict.fromkeys(found))
        return sorted(unique, key=lambda address: ipaddress.ip_address(address).version)

    async def _query_addresses(self, name: str) -> list[str]:
        results = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"), return_exceptions=True)
        found: list[str] = []
        failures: list[ResolutionError] = []
        for result in results:
            if isinstance(result, ResolutionError):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found.extend(rdata.to_text() for rdata in result)
        if found:
            return found
        for failure in failures:
            if isinstance(failure, LookupFailed):
                raise failure
        if any(failure.reason == "NXDOMAIN" for failure in failures):
            raise NameNotFound("NXDOMAIN")
        raise NameNotFound("no A or AAAA record")

    async def _getaddrinfo(self, name: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._lifetime):
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise LookupFailed("timeout") from None
        except socket.gaierror as error:
            if error.errno in _NOT_FOUND_GAI_ERRORS:
                raise NameNotFound("no A or AAAA record") from None
            raise LookupFailed("lookup failed") from None
        except UnicodeError:
            raise LookupFailed("the name is not a valid DNS name") from None
        return [str(info[4][0]).split("%", 1)[0] for info in infos]

    async def txt(self, name: str) -> list[str]:
        """The TXT records at ``name`` (CNAMEs followed); each record's strings joined."""
        if is_localhost_name(name):
            raise NameNotFound("NXDOMAIN")
        with telemetry.span("validator.dns_lookup", **{"dns.question.name": name, "dns.question.type": "TXT"}):
            answer = await self._query(name, "TXT")
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    async def caa(self, name: str) -> list[CaaRecord]:
        """The CAA RRset at ``name`` (CNAMEs followed); NameNotFound when there is none."""
        if is_localhost_name(name):
            raise NameNotFound("NXDOMAIN")
        with telemetry.span("validator.dns_lookup", **{"dns.question.name": name, "dns.question.type": "CAA"}):
            answer = await self._query(name, "CAA")
        return [
            CaaRecord(rdata.flags, rdata.tag.decode("ascii", "replace").lower(), rdata.value.decode("latin-1"))
            for rdata in answer
        ]

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            return await self._dns_resolver().resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise NameNotFound("NXDOMAIN") from None
        except dns.resolver.NoAnswer:
            raise NameNotFound(f"no {rdtype} record") from None
        except dns.resolver.NoNameservers:
            raise LookupFailed("SERVFAIL") from None
        except dns.exception.Timeout:
            raise LookupFailed("timeout") from None
        except dns.name.NameTooLong:
            raise LookupFailed("the name is too long") from None
        except dns.exception.DNSException:
            raise LookupFailed("lookup failed") from None
