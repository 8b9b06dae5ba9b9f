"""Name resolution for validation: A/AAAA (http-01, tls-alpn-01), TXT (dns-01) and CAA.

With ``ACME_RA_DNS_RESOLVERS`` set, every query goes to those servers (dnspython, no cache).
Without it, addresses come from ``getaddrinfo`` (so /etc/hosts works) and TXT records from the
system's resolvers. ``localhost`` and names under ``.localhost`` never cause a query
(RFC 6761 §6.3): addresses are the loopback ones, every other record type is absent.

With ``ACME_RA_DNSSEC`` on, the TXT and CAA lookups are DNSSEC-checked through the resolvers' AD
bit, and the resolvers are checked to validate (``acme_ra_validator.dnssec`` says how and why);
addresses (http-01, tls-alpn-01) are not: the BRs ask it of DNS-based validation and CAA.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any, NamedTuple

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.resolver
import dns.reversename

from acme_ra import telemetry
from acme_ra_validator import dnssec, metrics
from acme_ra_validator.dnssec import DnssecMode, DnssecPolicy, Security

log = logging.getLogger("acme_ra_validator.resolver")

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


class DnssecFailure(LookupFailed):
    """A bogus answer, an unsigned one under ``require-signed``, or resolvers that do not
    validate: the answer cannot be trusted (a ``dns`` problem)."""


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
    """One per process. ``nameservers`` are (ip, port) pairs; empty means the system's.
    ``dnssec``: the ``ACME_RA_DNSSEC`` policy of the TXT and CAA lookups (default off)."""

    def __init__(
        self,
        nameservers: list[tuple[str, int]],
        lifetime: float = DNS_LIFETIME_SECONDS,
        *,
        dnssec: DnssecPolicy | None = None,
    ) -> None:
        self._lifetime = lifetime
        self._configured = bool(nameservers)
        self._dns: dns.asyncresolver.Resolver | None = None
        self.dnssec = dnssec or DnssecPolicy(DnssecMode.OFF, ())
        # Why the resolvers are not trusted to validate (the last check), None when they are.
        self.dnssec_refusal: str | None = None
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
            self._dns = self._tune(resolver)

    def _tune(self, resolver: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
        resolver.lifetime = self._lifetime
        resolver.timeout = min(DNS_QUERY_TIMEOUT_SECONDS, self._lifetime)
        resolver.cache = None
        if self.dnssec.enabled:
            resolver.use_edns(0, dns.flags.DO, dnssec.EDNS_PAYLOAD)  # DO: the AD bit (and EDE) back
            resolver.flags = dns.flags.RD | dns.flags.AD
        return resolver

    @classmethod
    def from_settings(cls, settings: Any) -> NameResolver:
        """``ACME_RA_DNS_RESOLVERS`` and ``ACME_RA_DNSSEC``: what every validator role uses."""
        return cls(settings.resolver_addresses, dnssec=DnssecPolicy.from_settings(settings))

    async def probe_dnssec(self) -> str | None:
        """Ask every resolver whether it validates DNSSEC (``dnssec.probe_resolver``): None when
        all do, else the first refusal (one line)."""
        try:
            servers = [(server.address, server.port) for server in self._dns_resolver().nameservers
                       if isinstance(server, dns.nameserver.Do53Nameserver)]
        except LookupFailed as error:
            return error.reason
        if not servers:
            return "no DNS resolver to check for DNSSEC validation"
        results = await asyncio.gather(*(dnssec.probe_resolver(ip, port, self.dnssec) for ip, port in servers))
        return next((result for result in results if result is not None), None)

    async def check_dnssec(self) -> str | None:
        """``probe_dnssec``, remembered: DNSSEC lookups fail closed while a resolver does not
        validate; logged when that changes."""
        if not self.dnssec.enabled:
            return None
        refusal = await self.probe_dnssec()
        if refusal != self.dnssec_refusal:
            if refusal is None:
                log.info("DNS resolvers validate DNSSEC again")
            else:
                log.error("DNSSEC lookups fail until the resolvers validate: %s", refusal)
        self.dnssec_refusal = refusal
        metrics.DNSSEC_RESOLVERS_NOT_VALIDATING.set(1 if refusal else 0)
        return refusal

    async def watch_dnssec(self, interval: float = dnssec.PROBE_INTERVAL_SECONDS) -> None:
        """Check the resolvers every ``interval`` seconds, forever (cancel to stop)."""
        while True:
            await asyncio.sleep(interval)
            await self.check_dnssec()

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
            answer = await self._query(name, "TXT", dnssec_checked=True)
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    async def caa(self, name: str) -> list[CaaRecord]:
        """The CAA RRset at ``name`` (CNAMEs followed); NameNotFound when there is none."""
        if is_localhost_name(name):
            raise NameNotFound("NXDOMAIN")
        with telemetry.span("validator.dns_lookup", **{"dns.question.name": name, "dns.question.type": "CAA"}):
            answer = await self._query(name, "CAA", dnssec_checked=True)
        return [
            CaaRecord(rdata.flags, rdata.tag.decode("ascii", "replace").lower(), rdata.value.decode("latin-1"))
            for rdata in answer
        ]

    async def _query(self, name: str, rdtype: str, *, dnssec_checked: bool = False) -> dns.resolver.Answer:
        checked = dnssec_checked and self.dnssec.enabled
        if checked and self.dnssec_refusal is not None:
            metrics.DNSSEC_LOOKUPS.labels("refused").inc()
            raise DnssecFailure(f"DNSSEC: {self.dnssec_refusal}")
        try:
            answer = await self._dns_resolver().resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as error:
            if checked:
                self._check_security(list(error.kwargs.get("responses", {}).values()))
            raise NameNotFound("NXDOMAIN") from None
        except dns.resolver.NoAnswer as error:
            if checked:
                self._check_security([r] if (r := error.kwargs.get("response")) else [])
            raise NameNotFound(f"no {rdtype} record") from None
        except dns.resolver.NoNameservers as error:
            if checked:
                for failure in error.kwargs.get("errors") or []:
                    reason = dnssec.bogus_reason(failure[4] if len(failure) > 4 else None)
                    if reason is not None:
                        metrics.DNSSEC_LOOKUPS.labels("bogus").inc()
                        raise DnssecFailure(reason) from None
            raise LookupFailed("SERVFAIL") from None
        except dns.exception.Timeout:
            raise LookupFailed("timeout") from None
        except dns.name.NameTooLong:
            raise LookupFailed("the name is too long") from None
        except dns.exception.DNSException:
            raise LookupFailed("lookup failed") from None
        if checked:
            self._check_security([answer.response])
        return answer

    def _check_security(self, responses: list[dns.message.Message]) -> None:
        """Count the answer's outcome; raise DnssecFailure for an unsigned one under
        ``require-signed``."""
        secure = bool(responses) and all(dnssec.security(r) is Security.SECURE for r in responses)
        if secure or self.dnssec.mode is DnssecMode.VALIDATE:
            metrics.DNSSEC_LOOKUPS.labels("secure" if secure else "insecure").inc()
            return
        metrics.DNSSEC_LOOKUPS.labels("refused").inc()
        raise DnssecFailure("DNSSEC: the answer is not signed (insecure zone) and ACME_RA_DNSSEC=require-signed")
