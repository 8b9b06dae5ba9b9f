"""dns-persist-01 (draft-ietf-acme-dns-persist-02): a standing TXT record at
``_validation-persist.<domain>`` that authorises one CA (an issuer domain name) to issue for one
ACME account, for as long as it stays there:

    _validation-persist.example.org. TXT "ra.example.net; accounturi=<account URL>[; policy=wildcard][; persistUntil=<unix time>]"

The value has RFC 8659's issue-value syntax. Records naming another issuer are ignored (several
CAs may each have one). A record of ours is refused when its accounturi is another account's,
its persistUntil is past (or not an integer), or, for a wildcard name or a name below the
record's, it lacks ``policy=wildcard`` (-02 §5, §6: a record with it covers the name, every name
below it and their wildcards, so the names above the domain are looked at too, nearest first).

accounturi: the account URL itself (-00/-01, what acme.sh 3.1.4, lego and certbot's plugins
publish), or -02's hashed URI ``<accountHashPrefix>sha-256/<base64url SHA-256(len(domain) ||
domain || key thumbprint || account URL)>`` with the record's own domain or ``*``, for the
account's current key (acme-ra keeps no earlier keys: after a keyChange a hashed record must be
published again).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.resolver import NameNotFound, NameResolver, ResolutionError

PERSIST_LABEL = "_validation-persist"
# The hash algorithm of -02's hashed account URIs (RFC 6920 hash name string); the only one accepted.
HASH_NAME = "sha-256"
# Where a record's reason quotes a value, at most this much of it.
QUOTED_VALUE_CHARS = 128


@dataclass(frozen=True)
class PersistAccount:
    """The account asking: its URL as the frontend serves it, its key's RFC 7638 thumbprint
    (base64url) and the provisioner's ``accountHashPrefix``."""

    url: str
    thumbprint: str
    hash_prefix: str


@dataclass(frozen=True)
class PersistRecord:
    issuer: str
    # Parameter tags lowercased; values as published.
    parameters: dict[str, str]


class MalformedRecord(ValueError):
    pass


def account_hash_prefix(external_url: str, provisioner: str) -> str:
    """The directory's ``accountHashPrefix`` of a provisioner (the frontend advertises the same)."""
    return f"{external_url}/acme/{provisioner}/account-hash/"


def hashed_account_uri(prefix: str, domain: str, thumbprint: str, account_url: str) -> str:
    """-02 §4.1: ``domain`` is the record's FQDN (lowercase A-labels, no final dot) or ``*``."""
    name = domain.encode("ascii")
    digest = hashlib.sha256(bytes([len(name)]) + name + thumbprint.encode("ascii") + account_url.encode("ascii"))
    return f"{prefix}{HASH_NAME}/{base64.urlsafe_b64encode(digest.digest()).rstrip(b'=').decode('ascii')}"


def parse_record(text: str) -> PersistRecord:
    """``issuer[; tag=value]...`` (RFC 8659 §4.2); raises MalformedRecord."""
    issuer, *rest = text.split(";")
    issuer = issuer.strip().rstrip(".").lower()
    if not issuer or any(c.isspace() for c in issuer):
        raise MalformedRecord("no issuer domain name")
    parameters: dict[str, str] = {}
    for index, item in enumerate(rest):
        item = item.strip()
        if not item and index == len(rest) - 1:
            continue  # a trailing ";"
        tag, equals, value = item.partition("=")
        tag, value = tag.strip().lower(), value.strip()
        if not equals or not tag or not tag.replace("-", "").isalnum() or any(c.isspace() for c in value):
            raise MalformedRecord(f"the parameter {json.dumps(item[:QUOTED_VALUE_CHARS])} is not tag=value")
        if tag in parameters:
            raise MalformedRecord(f"the parameter {tag} appears twice")
        parameters[tag] = value
    return PersistRecord(issuer, parameters)


def validation_names(domain: str) -> list[str]:
    """The domain, then the names above it, nearest first, down to two labels."""
    labels = domain.rstrip(".").lower().split(".")
    return [".".join(labels[i:]) for i in range(max(len(labels) - 1, 1))]


def refusal(record: PersistRecord, at: str, domain: str, *, wildcard: bool, account: PersistAccount,
            now: dt.datetime) -> tuple[str | None, int | None]:
    """Why ``record`` (one of ours, found at ``_validation-persist.<at>``) does not validate
    ``domain`` (None if it does), and its persistUntil."""
    accounturi = record.parameters.get("accounturi")
    if accounturi is None:
        return "has no accounturi", None
    accepted = {account.url, *(hashed_account_uri(account.hash_prefix, name, account.thumbprint, account.url)
                                for name in (at, "*"))}
    if accounturi not in accepted:
        return f"names another account (accounturi={accounturi[:QUOTED_VALUE_CHARS]}), not {account.url}", None
    until: int | None = None
    if "persistuntil" in record.parameters:
        raw = record.parameters["persistuntil"]
        if not raw.isdigit():
            return f"has a persistUntil that is not a Unix time ({json.dumps(raw[:QUOTED_VALUE_CHARS])})", None
        until = int(raw)
        if until <= now.timestamp():
            ended = dt.datetime.fromtimestamp(until, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return f"expired at {ended} (persistUntil={raw})", None
    if (wildcard or at != domain) and record.parameters.get("policy", "").lower() != "wildcard":
        what = f"the wildcard *.{domain}" if wildcard else f"{domain}, a name below {at},"
        return f"has no policy=wildcard, which {what} needs", None
    return None, until


async def check_dns_persist01(
    resolver: NameResolver,
    domain: str,
    *,
    wildcard: bool,
    account: PersistAccount,
    issuer_domains: tuple[str, ...],
    now: dt.datetime | None = None,
) -> int | None:
    """Return the persistUntil (or None) of the record that validates ``domain`` (``*.domain``
    when ``wildcard``); raise ValidationFailure when none does."""
    now = now or dt.datetime.now(dt.UTC)
    domain = domain.rstrip(".").lower()
    reasons: list[str] = []
    lookup_failure: str | None = None
    for at in validation_names(domain):
        name = f"{PERSIST_LABEL}.{at}"
        try:
            values = await resolver.txt(name)
        except NameNotFound:
            continue
        except ResolutionError as error:  # SERVFAIL, timeout (and any later kind, e.g. DNSSEC)
            lookup_failure = lookup_failure or f"DNS problem: {error.reason} looking up TXT for {name}"
            continue
        for value in values:
            try:
                record = parse_record(value)
            except MalformedRecord as error:
                if value.split(";")[0].strip().rstrip(".").lower() in issuer_domains:
                    reasons.append(f"The TXT record at {name} is malformed: {error}")
                continue
            if record.issuer not in issuer_domains:
                continue  # another CA's
            reason, until = refusal(record, at, domain, wildcard=wildcard, account=account, now=now)
            if reason is None:
                return until
            reasons.append(f"The TXT record at {name} {reason}")
    if reasons:
        more = f" (and {len(reasons) - 1} more refused)" if len(reasons) > 1 else ""
        raise ValidationFailure("unauthorized", reasons[0] + more)
    if lookup_failure is not None:
        raise ValidationFailure("dns", lookup_failure)
    issuers = " or ".join(issuer_domains)
    raise ValidationFailure(
        "unauthorized", f"No TXT record for issuer {issuers} found at {PERSIST_LABEL}.{domain}"
        + ("" if "." not in domain else " nor, with policy=wildcard, above it")
    )
