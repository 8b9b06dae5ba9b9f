"""CAA (RFC 8659, with the RFC 8657 ``accounturi`` and ``validationmethods`` parameters), checked
for DNS identifiers once their challenge has passed.

The relevant RRset is the first CAA RRset found at the name or, climbing, at a parent (up to the
TLD); the resolver follows CNAMEs. ``issuewild`` properties (when present) govern wildcard
authorizations, ``issue`` properties everything else. Issuance is allowed when there is no such
property, or one names an issuer among ``ACME_RA_CAA_IDENTITIES`` with parameters this account and
method satisfy. A critical property the validator does not know refuses issuance; so does a DNS
failure (SERVFAIL, timeout) at any name tried. No identities configured = no CAA check.
"""

from __future__ import annotations

import asyncio
import re

from acme_ra import telemetry
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.resolver import CaaRecord, LookupFailed, NameNotFound, NameResolver, is_localhost_name

# Property tags understood (RFC 8659 §4.2-4.4, RFC 9495 issuemail, issuevmc): a critical one of
# any other tag refuses issuance.
KNOWN_TAGS = frozenset({"issue", "issuewild", "iodef", "issuemail", "issuevmc"})
# The Issuer Critical flag (RFC 8659 §4.1).
CRITICAL_FLAG = 0x80
# How many refusal reasons one problem detail quotes.
QUOTED_REASONS = 3

_LABEL = r"[A-Za-z0-9](?:-*[A-Za-z0-9])*"
_ISSUER_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_PARAMETER = re.compile(r"^([A-Za-z0-9](?:-*[A-Za-z0-9])*)[ \t]*=[ \t]*([\x21-\x3a\x3c-\x7e]*)$")
_METHOD = re.compile(rf"^{_LABEL}$")


async def check_caa(
    resolver: NameResolver,
    name: str,
    *,
    wildcard: bool,
    identities: tuple[str, ...],
    account_uri: str,
    method: str,
) -> None:
    """Return when CAA lets one of ``identities`` issue for ``name``; raise ValidationFailure
    (``caa``, or ``dns`` when the records cannot be known) otherwise."""
    name = name.rstrip(".").lower()
    if not identities or is_localhost_name(name):
        return
    with telemetry.span("validator.caa_check", **{"acme.challenge_type": method, "acme.wildcard": wildcard}) as span:
        found_at, records = await relevant_rrset(resolver, name)
        refusal = None if not records else refusal_reason(records, wildcard, identities, account_uri, method)
        span.set_attribute("acme.caa.outcome", "permitted" if refusal is None else "refused")
        if refusal is not None:
            raise ValidationFailure("caa", f"CAA record for {found_at} prevents issuance: {refusal}")


def candidate_names(name: str) -> list[str]:
    """``name`` and its parents, up to and including the TLD (never the root)."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


async def relevant_rrset(resolver: NameResolver, name: str) -> tuple[str, list[CaaRecord]]:
    """The first non-empty CAA RRset climbing from ``name`` (queried in parallel), and where it
    was found; an empty list when there is none. A lookup failure before it is found refuses."""
    names = candidate_names(name)
    results = await asyncio.gather(*(resolver.caa(candidate) for candidate in names), return_exceptions=True)
    for candidate, result in zip(names, results):
        if isinstance(result, NameNotFound):
            continue
        if isinstance(result, LookupFailed):
            raise ValidationFailure("dns", f"DNS problem: {result.reason} looking up CAA for {candidate}")
        if isinstance(result, BaseException):
            raise result
        if result:
            return candidate, result
    return name, []


def refusal_reason(
    records: list[CaaRecord], wildcard: bool, identities: tuple[str, ...], account_uri: str, method: str
) -> str | None:
    """None when the RRset lets one of ``identities`` issue, else why not (short, for a client)."""
    for record in records:
        if record.flags & CRITICAL_FLAG and record.tag not in KNOWN_TAGS:
            return f"critical property {record.tag!r} is not understood"
    issue = [record for record in records if record.tag == "issue"]
    issuewild = [record for record in records if record.tag == "issuewild"]
    relevant = issuewild if wildcard and issuewild else issue
    if not relevant:
        return None
    reasons: list[str] = []
    for record in relevant:
        reason = _record_refusal(record, identities, account_uri, method)
        if reason is None:
            return None
        reasons.append(reason)
    shown = "; ".join(reasons[:QUOTED_REASONS]) + ("; ..." if len(reasons) > QUOTED_REASONS else "")
    return shown


def _record_refusal(record: CaaRecord, identities: tuple[str, ...], account_uri: str, method: str) -> str | None:
    quoted = f'{record.tag} "{record.value}"'
    parsed = parse_issue_value(record.value)
    if parsed is None:
        return f"{quoted} is malformed"
    issuer, parameters = parsed
    if issuer is None:
        return f"{quoted} authorizes no CA"
    known = {identity.rstrip(".").lower() for identity in identities}
    if issuer.lower() not in known:
        return f"{quoted} does not name this CA ({', '.join(identities)})"
    account_uris = [value for tag, value in parameters if tag == "accounturi"]
    if len(account_uris) > 1:
        return f"{quoted} has more than one accounturi (RFC 8657 §3)"
    if account_uris and account_uris[0] != account_uri:
        return f"{quoted} is for another account (this account is {account_uri})"
    methods = [value for tag, value in parameters if tag == "validationmethods"]
    if len(methods) > 1:
        return f"{quoted} has more than one validationmethods (RFC 8657 §4)"
    if methods:
        allowed = methods[0].split(",")
        if not all(_METHOD.match(item) for item in allowed):
            return f"{quoted} has a malformed validationmethods"
        if method not in allowed:
            return f"{quoted} does not allow the {method} validation method"
    return None


def parse_issue_value(value: str) -> tuple[str | None, list[tuple[str, str]]] | None:
    """RFC 8659 §4.2: ``[issuer-domain-name] [";" parameters]`` -> (issuer or None when empty,
    [(tag lowercased, value)]); None when malformed."""
    issuer_part, _, parameters_part = value.partition(";")
    issuer = issuer_part.strip(" \t")
    if issuer and not _ISSUER_DOMAIN.match(issuer):
        return None
    parameters: list[tuple[str, str]] = []
    if parameters_part.strip(" \t"):
        for item in parameters_part.split(";"):
            item = item.strip(" \t")
            if not item:
                continue  # a trailing ";" (lenient, as Boulder)
            match = _PARAMETER.match(item)
            if match is None:
                return None
            parameters.append((match.group(1).lower(), match.group(2)))
    return (issuer or None), parameters
