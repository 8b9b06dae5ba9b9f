"""Upstream dns-01: the signer publishes ``_acme-challenge.<name>`` TXT for the upstream CA.

For each name the record's owner is ``_acme-challenge.<name>``, or the target of the CNAME found
there (the delegation pattern: hosts' zones point their ``_acme-challenge`` names into one
validation zone, and acme-ra's TSIG key may write that zone only). The zone to update is found
by SOA lookup of the owner. After publishing, every authoritative server of the zone is asked
directly (not through a cache) until each answers every value; only then is the upstream
challenge POSTed. ``RecordSet`` values are what the journal records before they are published.

Publishers: ``Rfc2136Publisher`` (RFC 2136 dynamic update signed with TSIG, dnspython) and
``HookPublisher`` (``HOOK add|remove FQDN VALUE``: any DNS provider's script).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update
from josepy import JWK

from acme_ra_signer.upstream.acme_config import Rfc2136, Upstream
from acme_ra_signer.upstream.base import UpstreamRejected, UpstreamUnavailable, upstream_problem

log = logging.getLogger("acme_ra_signer.upstream.dns01")

# TTL of the published TXT records (seconds): short, as nothing should cache a challenge.
TXT_TTL_SECONDS = 60
# How long one run of the hook may take (seconds).
HOOK_TIMEOUT_SECONDS = 120.0
# One DNS query or update (seconds).
DNS_TIMEOUT_SECONDS = 5.0
# CNAMEs followed from _acme-challenge.<name> before giving up (a loop, or a long chain).
MAX_CNAME_HOPS = 8
# Propagation check: first pause between rounds, growth, longest pause (seconds).
CHECK_FIRST_SECONDS = 0.2
CHECK_FACTOR = 1.5
CHECK_MAX_SECONDS = 5.0

# (owner fqdn with the trailing dot, TXT value): as the journal stores them.
Record = tuple[str, str]


class DnsConfigProblem(UpstreamRejected):
    """The DNS server refused the update for a reason only the operator can fix (TSIG key,
    update rights): the order fails once with this problem; retrying would not help."""


def challenge_name(identifier: str) -> str:
    """``_acme-challenge.<name>.`` of an identifier (a wildcard's is its base name's)."""
    base = identifier.removeprefix("*.")
    return f"_acme-challenge.{base.rstrip('.')}."


def txt_value(token: str, account_key: JWK) -> str:
    """base64url(SHA-256(key authorization)) (RFC 8555 §8.4), with the account's thumbprint."""
    thumbprint = base64.urlsafe_b64encode(account_key.public_key().thumbprint()).rstrip(b"=").decode()
    digest = hashlib.sha256(f"{token}.{thumbprint}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class DnsLookup:
    """CNAME, SOA and NS lookups through the configured nameservers (else the system's
    resolvers), and TXT questions asked of one server directly."""

    def __init__(self, nameservers: Sequence[tuple[str, int]]) -> None:
        self.nameservers = tuple(nameservers)
        self.resolver = dns.asyncresolver.Resolver(configure=not self.nameservers)
        if self.nameservers:
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers]
        self.resolver.lifetime = DNS_TIMEOUT_SECONDS
        self.resolver.cache = None

    async def owner(self, name: str) -> str:
        """Where the TXT record of ``name`` is written: the end of its CNAME chain."""
        current = name
        for _ in range(MAX_CNAME_HOPS):
            try:
                answer = await self.resolver.resolve(current, "CNAME", raise_on_no_answer=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
                return current
            except dns.exception.Timeout:
                raise UpstreamUnavailable(f"dns-01: no DNS answer for {current} CNAME") from None
            if answer.rrset is None:
                return current
            current = answer.rrset[0].target.to_text()
        raise DnsConfigProblem(
            {"type": "serverInternal", "detail": f"dns-01: more than {MAX_CNAME_HOPS} CNAMEs from {name}"}
        )

    async def zone(self, name: str) -> str:
        try:
            return (await dns.asyncresolver.zone_for_name(name, resolver=self.resolver)).to_text()
        except dns.resolver.NoRootSOA:
            raise DnsConfigProblem(
                {"type": "serverInternal", "detail": f"dns-01: no zone (SOA) found above {name}"}
            ) from None
        except dns.exception.DNSException as error:
            raise UpstreamUnavailable(f"dns-01: SOA lookup of {name} failed: {error}") from None

    async def authoritative_servers(self, zone: str) -> list[tuple[str, int]]:
        """The configured nameservers, else each NS of the zone (its addresses) on port 53."""
        if self.nameservers:
            return list(self.nameservers)
        servers: list[tuple[str, int]] = []
        try:
            ns = await self.resolver.resolve(zone, "NS")
            for record in ns:
                for rdtype in ("A", "AAAA"):
                    try:
                        addresses = await self.resolver.resolve(record.target, rdtype)
                    except dns.resolver.NoAnswer:
                        continue
                    servers += [(a.address, 53) for a in addresses]
        except dns.exception.DNSException as error:
            raise UpstreamUnavailable(f"dns-01: NS lookup of {zone} failed: {error}") from None
        return servers

    async def txt_at(self, server: tuple[str, int], name: str) -> set[str]:
        """The TXT values ``server`` answers for ``name`` (empty on any failure: asked again)."""
        query = dns.message.make_query(name, "TXT")
        query.flags &= ~dns.flags.RD
        try:
            response = await dns.asyncquery.udp_with_fallback(query, server[0], DNS_TIMEOUT_SECONDS, server[1])
        except (dns.exception.DNSException, OSError):
            return set()
        message = response[0]
        values: set[str] = set()
        for rrset in message.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                values |= {b"".join(r.strings).decode() for r in rrset}
        return values


class Rfc2136Publisher:
    """Adds and removes TXT records by RFC 2136 dynamic update signed with TSIG."""

    def __init__(self, config: Rfc2136, upstream: Upstream) -> None:
        self.config = config
        self.upstream = upstream
        secret = config.secret.get_secret_value()
        self.keyring = dns.tsigkeyring.from_text({config.key_name: (config.algorithm, secret)})

    async def add(self, zone: str, records: Iterable[Record]) -> None:
        await self._update(zone, records, add=True)

    async def remove(self, zone: str, records: Iterable[Record]) -> None:
        await self._update(zone, records, add=False)

    async def _update(self, zone: str, records: Iterable[Record], add: bool) -> None:
        update = dns.update.UpdateMessage(
            zone,
            keyring=self.keyring,
            keyname=dns.name.from_text(self.config.key_name),
            keyalgorithm=self.config.algorithm,
        )
        origin = dns.name.from_text(zone)
        for fqdn, value in records:
            relative = dns.name.from_text(fqdn).relativize(origin)
            if add:
                update.add(relative, TXT_TTL_SECONDS, "TXT", f'"{value}"')
            else:
                update.delete(relative, "TXT", f'"{value}"')
        server = f"{self.config.host}:{self.config.port}"
        host = await _address(self.config.host)
        try:
            response = await dns.asyncquery.tcp(update, host, DNS_TIMEOUT_SECONDS, self.config.port)
        except dns.tsig.PeerError as error:
            raise self._refused(zone, f"the server rejected the TSIG signature ({type(error).__name__})") from None
        except (dns.exception.Timeout, OSError) as error:
            raise UpstreamUnavailable(f"dns-01: update of {zone} at {server}: {error or 'timeout'}") from None
        except dns.exception.DNSException as error:
            raise UpstreamUnavailable(f"dns-01: update of {zone} at {server}: {error}") from None
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        if rcode in (dns.rcode.NOTAUTH, dns.rcode.REFUSED, dns.rcode.NOTZONE):
            raise self._refused(zone, f"the server answered {text}")
        raise UpstreamUnavailable(f"dns-01: update of {zone} at {server} answered {text}")

    def _refused(self, zone: str, why: str) -> DnsConfigProblem:
        """The operator's log line names the server, the key and the setting; the client's
        problem says what happened without the DNS topology."""
        env = self.upstream.origin == "ACME_RA_UPSTREAM_"
        where = "ACME_RA_UPSTREAM_DNS_TSIG_*" if env else self.upstream.setting("dns_update")
        log.error(
            "dns-01 update of zone %s at %s:%s with TSIG key %s refused: %s; check %s and the zone's update policy",
            zone, self.config.host, self.config.port, self.config.key_name.rstrip("."), why, where,
            extra={"upstream": self.upstream.name},
        )
        detail = (
            f"acme-ra could not publish the dns-01 record it asks for in zone {zone}: the DNS server refused "
            "the update (its TSIG key or update policy is misconfigured; the signer's log says which)"
        )
        return DnsConfigProblem(upstream_problem(self.upstream.name, "serverInternal", detail))


class HookPublisher:
    """Adds and removes TXT records by running ``HOOK add|remove FQDN VALUE`` (any DNS
    provider's script). A hook that exits non-zero fails the order; its last output line is
    logged."""

    def __init__(self, hook: Path, upstream: Upstream) -> None:
        self.hook = hook
        self.upstream = upstream

    async def add(self, zone: str, records: Iterable[Record]) -> None:
        for fqdn, value in records:
            await self._run("add", fqdn, value)

    async def remove(self, zone: str, records: Iterable[Record]) -> None:
        for fqdn, value in records:
            await self._run("remove", fqdn, value)

    async def _run(self, action: str, fqdn: str, value: str) -> None:
        name = fqdn.rstrip(".")
        try:
            process = await asyncio.create_subprocess_exec(
                str(self.hook), action, name, value,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as error:
            raise UpstreamUnavailable(f"dns-01 hook {self.hook}: {error.strerror}") from None
        try:
            output, _ = await asyncio.wait_for(process.communicate(), HOOK_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise UpstreamUnavailable(
                f"dns-01 hook {self.hook} {action} {name}: no exit in {HOOK_TIMEOUT_SECONDS:.0f}s"
            ) from None
        if process.returncode == 0:
            return
        lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
        said = lines[-1][:300] if lines else "no output"
        # Its output may carry a provider's answer with tokens: the log has it, the client not.
        log.error(
            "dns-01 hook %s %s %s exited %s: %s", self.hook, action, name, process.returncode, said,
            extra={"upstream": self.upstream.name},
        )
        detail = (
            f"acme-ra could not {action} the dns-01 record {name} it asks for: the hook {self.hook.name} "
            f"exited {process.returncode} (the signer's log has its output)"
        )
        raise DnsConfigProblem(upstream_problem(self.upstream.name, "serverInternal", detail))


async def _address(host: str) -> str:
    """dnspython talks to addresses: a host name is resolved by the system."""
    try:
        dns.inet.af_for_address(host)
        return host
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
        return str(infos[0][4][0])


class Dns01:
    """Publishes, checks and removes the TXT records of one upstream order's authorizations."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.lookup = DnsLookup(upstream.dns_nameservers)
        self.publisher: Rfc2136Publisher | HookPublisher
        if upstream.rfc2136 is not None:
            self.publisher = Rfc2136Publisher(upstream.rfc2136, upstream)
        else:
            assert upstream.dns_hook is not None  # acme_config._check: one of the two
            self.publisher = HookPublisher(upstream.dns_hook, upstream)

    async def owners(self, names: Iterable[str]) -> dict[str, str]:
        """``_acme-challenge.<name>.`` -> where its record is written (CNAMEs followed)."""
        return {name: await self.lookup.owner(name) for name in sorted(set(names))}

    async def _by_zone(self, records: Iterable[Record]) -> dict[str, list[Record]]:
        zones: dict[str, list[Record]] = {}
        for fqdn, value in records:
            zones.setdefault(await self.lookup.zone(fqdn), []).append((fqdn, value))
        return zones

    async def publish(self, records: Sequence[Record]) -> None:
        """Add ``records``, zone by zone. An update the server refused changed nothing (RFC 2136
        updates are atomic): the zones already updated are reverted and the refusal raised."""
        done: list[tuple[str, list[Record]]] = []
        for zone, part in (await self._by_zone(records)).items():
            try:
                await self.publisher.add(zone, part)
            except DnsConfigProblem:
                for earlier, added in done:
                    try:
                        await self.publisher.remove(earlier, added)
                    except UpstreamUnavailable as error:
                        log.warning("dns-01 records not removed: %s", error, extra={"upstream": self.upstream.name})
                raise
            done.append((zone, part))
        log.info(
            "dns-01 records published",
            extra={"upstream": self.upstream.name, "records": [fqdn for fqdn, _ in records]},
        )

    async def remove(self, records: Sequence[Record]) -> None:
        for zone, part in (await self._by_zone(records)).items():
            await self.publisher.remove(zone, part)

    async def wait_visible(self, records: Sequence[Record], deadline: float) -> None:
        """Until every authoritative server of each zone answers every value (asked directly)."""
        timeout = self.upstream.dns_propagation_timeout_seconds
        limit = min(deadline, time.monotonic() + timeout)
        wanted: dict[str, set[str]] = {}
        for fqdn, value in records:
            wanted.setdefault(fqdn, set()).add(value)
        servers = {fqdn: await self.lookup.authoritative_servers(await self.lookup.zone(fqdn)) for fqdn in wanted}
        pause = CHECK_FIRST_SECONDS
        while True:
            missing = [
                f"{fqdn} at {host}:{port}"
                for fqdn, values in wanted.items()
                for host, port in servers[fqdn]
                if not values <= await self.lookup.txt_at((host, port), fqdn)
            ]
            if not missing:
                return
            if time.monotonic() + pause > limit:
                if limit < deadline:
                    setting = self.upstream.setting("dns_propagation_timeout_seconds")
                    log.error(
                        "dns-01 records not answered within %.0fs (%s): missing %s",
                        timeout, setting, ", ".join(missing[:5]), extra={"upstream": self.upstream.name},
                    )
                    names = sorted({entry.split(" at ", 1)[0] for entry in missing})
                    raise UpstreamRejected(
                        upstream_problem(
                            self.upstream.name,
                            "serverInternal",
                            f"the dns-01 record it asks for at {', '.join(names)} was not answered by every "
                            f"authoritative server within {timeout:.0f}s ({setting})",
                        )
                    )
                raise UpstreamUnavailable(f"dns-01: records not visible yet ({', '.join(missing[:3])})")
            await asyncio.sleep(pause)
            pause = min(pause * CHECK_FACTOR, CHECK_MAX_SECONDS)
