"""DNSSEC for the validator's TXT and CAA lookups (``ACME_RA_DNSSEC``): dns-01, dns-persist-01,
dns-account-01 and CAA all read through ``NameResolver.txt``/``.caa``, so all of them get it.

How: the validator trusts the AD bit of its configured resolvers (``ACME_RA_DNS_RESOLVERS``, e.g.
a local unbound) and does not validate signatures in process. A validating resolver is what the
Baseline Requirements describe (4.2.2.1.1: "the DNS resolver used ... MUST perform DNSSEC
validation", RFC 4035 §5, NSEC3, RFC 6840 §4) and what Let's Encrypt runs (unbound); it tracks
root key rollovers (RFC 5011), NSEC3 and algorithm rules that a new Python validator would have
to get right on the issuance path, and costs no extra query per lookup. Each MPIC perspective
then validates with its own resolver, at its own site.

The AD bit is only worth the resolver that sets it, so the validator checks its resolvers: at
start-up (``python -m acme_ra_validator`` refuses to start, with one line, when a resolver does
not set AD on the trust anchor's DNSKEY answer) and every ``PROBE_INTERVAL_SECONDS`` while it runs
(meanwhile every DNSSEC lookup fails closed with a ``dns`` problem and /readyz says 503). The probe
asks each resolver for the DNSKEY RRset of each trust anchor (``ACME_RA_DNSSEC_TRUST_ANCHORS_FILE``,
default the IANA root's KSKs) with DO set, requires AD, and checks in process (dns.dnssec) that a
key matching the anchor signed that RRset: a resolver that answers for another root is refused.
The path to the resolver must be trusted (RFC 6840 §5.7): run it on the same host or pod.

Outcomes per lookup: ``secure`` (AD set), ``insecure`` (no AD: a provably unsigned zone, since
the resolver validates; refused under ``require-signed``), ``bogus`` (SERVFAIL with a DNSSEC
Extended DNS Error, RFC 8914: enable ``ede: yes`` in unbound; the reason is quoted to the client).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.dnssec
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zonefile

log = logging.getLogger("acme_ra_validator.dnssec")

# The IANA root's key-signing keys (KSK-2017 and KSK-2024), the default trust anchors; the root
# zone is signed by KSK-2024 since the rollover of October 2026.
ROOT_TRUST_ANCHORS = (
    ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
    ". IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16",
)
# How often a running validator checks again that its resolvers validate (seconds).
PROBE_INTERVAL_SECONDS = 300.0
# How long start-up waits for a resolver that does not answer yet (a sidecar starting), seconds.
STARTUP_WAIT_SECONDS = 30.0
# Time one probe query may take (seconds).
PROBE_TIMEOUT_SECONDS = 3.0
# EDNS buffer size of DNSSEC queries (the DNS flag day 2020 value); larger answers go over TCP.
EDNS_PAYLOAD = 1232
# What a refusal says of a resolver that did not answer (start-up waits for those).
UNANSWERED = "did not answer the DNSSEC check"
# Extended DNS Error codes (RFC 8914 §4) that mean a DNSSEC validation failure.
BOGUS_EDE_CODES = frozenset({5, 6, 7, 8, 9, 10, 11, 12})
# How much of a resolver's EDE text a problem detail quotes.
QUOTED_EDE_CHARS = 200


class DnssecMode(enum.StrEnum):
    OFF = "off"
    VALIDATE = "validate"
    REQUIRE_SIGNED = "require-signed"


class Security(enum.StrEnum):
    SECURE = "secure"
    INSECURE = "insecure"


@dataclass(frozen=True)
class DnssecPolicy:
    """What ``ACME_RA_DNSSEC`` asks, and the anchors the resolvers are checked against."""

    mode: DnssecMode
    anchors: tuple[dns.rrset.RRset, ...]
    anchors_source: str = "the IANA root trust anchors"

    @property
    def enabled(self) -> bool:
        return self.mode is not DnssecMode.OFF

    @classmethod
    def from_settings(cls, settings: Any) -> DnssecPolicy:
        """From ``settings.dnssec`` and ``settings.dnssec_trust_anchors_file``; ValueError (one
        line) when the file holds no DS or DNSKEY record."""
        path: Path | None = settings.dnssec_trust_anchors_file
        mode = DnssecMode(settings.dnssec)
        if mode is DnssecMode.OFF:
            return cls(mode, ())
        return cls(mode, load_trust_anchors(path), str(path) if path else "the IANA root trust anchors")


def load_trust_anchors(path: Path | None) -> tuple[dns.rrset.RRset, ...]:
    """The DS and DNSKEY RRsets of a zone-file-syntax file (absolute names; TTL optional), or
    the root's when ``path`` is None."""
    text = path.read_text() if path is not None else "\n".join(ROOT_TRUST_ANCHORS) + "\n"
    where = str(path) if path is not None else "ROOT_TRUST_ANCHORS"
    try:
        rrsets = dns.zonefile.read_rrsets(text, rdclass=None, default_ttl=0, relativize=False)
    except dns.exception.DNSException as error:
        raise ValueError(f"{where}: not zone-file syntax: {error}") from None
    anchors = tuple(r for r in rrsets if r.rdtype in (dns.rdatatype.DS, dns.rdatatype.DNSKEY))
    if not anchors:
        raise ValueError(f"{where}: no DS or DNSKEY record")
    return anchors


def dnssec_query(name: dns.name.Name | str, rdtype: str) -> dns.message.QueryMessage:
    """A query with DO (RRSIGs and the AD bit back) and AD (RFC 6840 §5.7) set."""
    query = dns.message.make_query(name, rdtype, want_dnssec=True, payload=EDNS_PAYLOAD)
    query.flags |= dns.flags.AD
    return query


def security(response: dns.message.Message) -> Security:
    """A validating resolver's NOERROR/NXDOMAIN answer: AD set = secure, else insecure."""
    return Security.SECURE if response.flags & dns.flags.AD else Security.INSECURE


def bogus_reason(response: dns.message.Message | None) -> str | None:
    """The DNSSEC failure a SERVFAIL response names in its Extended DNS Errors, or None."""
    if response is None:
        return None
    for option in response.extended_errors():
        if int(option.code) in BOGUS_EDE_CODES:
            name = dns.edns.EDECode.to_text(option.code).replace("_", " ").title().replace("Dnssec", "DNSSEC")
            text = f": {option.text[:QUOTED_EDE_CHARS]}" if option.text else ""
            return f"DNSSEC validation failed ({name}{text})"
    return None


async def probe_resolver(address: str, port: int, policy: DnssecPolicy) -> str | None:
    """None when the resolver at ``address``:``port`` validates DNSSEC, else why not (one line)."""
    where = f"{address}:{port}" if port != 53 else address
    for anchor_name in dict.fromkeys(anchor.name for anchor in policy.anchors):
        owner = anchor_name.to_text()
        try:
            response, _ = await dns.asyncquery.udp_with_fallback(
                dnssec_query(anchor_name, "DNSKEY"), address, timeout=PROBE_TIMEOUT_SECONDS, port=port
            )
        except (OSError, dns.exception.DNSException) as error:
            return f"the DNS resolver {where} {UNANSWERED} ({type(error).__name__})"
        if response.rcode() != dns.rcode.NOERROR:
            return (f"the DNS resolver {where} answered {dns.rcode.to_text(response.rcode())} for the "
                    f"DNSKEY of {owner} (its trust anchor is not {policy.anchors_source}?)")
        if not response.flags & dns.flags.AD:
            return (f"the DNS resolver {where} does not validate DNSSEC: no AD bit on the signed DNSKEY "
                    f"answer for {owner} (ACME_RA_DNSSEC={policy.mode.value} needs a validating resolver)")
        reason = _anchor_refusal(response, anchor_name, policy)
        if reason is not None:
            return f"the DNS resolver {where} validates against other keys: {reason}"
    return None


def _anchor_refusal(response: dns.message.Message, owner: dns.name.Name, policy: DnssecPolicy) -> str | None:
    """None when a key of ``owner``'s DNSKEY RRset matches a trust anchor and signed the RRset."""
    try:
        keys = response.find_rrset(response.answer, owner, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
        signatures = response.find_rrset(
            response.answer, owner, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY
        )
    except KeyError:
        return f"the DNSKEY answer for {owner} holds no DNSKEY and RRSIG records"
    anchored = dns.rrset.RRset(owner, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    for anchor in policy.anchors:
        if anchor.name != owner:
            continue
        for key in keys:
            if _matches(anchor, owner, key):
                anchored.add(key)
    if not anchored:
        return f"no DNSKEY of {owner} matches {policy.anchors_source}"
    try:
        dns.dnssec.validate(keys, signatures, {owner: anchored})
    except dns.exception.ValidationFailure as error:
        return f"the DNSKEY RRset of {owner} is not signed by a key of {policy.anchors_source} ({error})"
    return None


def _matches(anchor: dns.rrset.RRset, owner: dns.name.Name, key: Any) -> bool:
    """Is ``key`` one of the anchor's DNSKEYs, or the key of one of its DS records?"""
    if anchor.rdtype == dns.rdatatype.DNSKEY:
        return key in anchor
    return any(dns.dnssec.make_ds(owner, key, ds.digest_type) == ds for ds in anchor)
