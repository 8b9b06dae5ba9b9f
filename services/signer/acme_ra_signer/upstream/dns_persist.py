"""Upstream dns-persist-01 (``authz_strategy: dns-persist-01``): the upstream CA validates a
standing ``_validation-persist`` TXT record that the operator published once for acme-ra's
upstream account, so the signer provisions nothing: it POSTs the challenge and waits, as
``prevalidated`` does (acme.py ``_authorize``).

``acme-ra upstream persist-record NAME`` (tools/acme_ra_tools/persist_record.py) prints that
record with what this module works out: the upstream account's URL (registering the account
first when it has none yet, as the signer would) and the upstream's issuer domain names, from its
directory (draft-ietf-acme-dns-persist-02 ``meta.issuerDomainNames``, else ``meta.caaIdentities``,
where -01 CAs and acme.sh look).

The record's accounturi is the account URL itself (-00/-01, and what acme-ra accepts as an
upstream); one record with ``policy=wildcard`` covers a zone's names and their wildcards.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import httpx
from acme import messages

from acme_ra.config import Settings, normal_issuer_domain
from acme_ra.db.engine import Database
from acme_ra.sealing import Sealer
from acme_ra_signer.upstream.accounts import AccountStore
from acme_ra_signer.upstream.acme_client import AcmeClient, tls_context
from acme_ra_signer.upstream.base import UpstreamUnavailable
from acme_ra_signer.upstream.catalog import Upstream, UpstreamConfigError, load_catalog, sealing_secret

STRATEGY = "dns-persist-01"
PERSIST_LABEL = "_validation-persist"
# One GET of the upstream's directory (seconds).
DIRECTORY_TIMEOUT_SECONDS = 30.0


def challenge_type(challenge: messages.ChallengeBody) -> str:
    """A challenge's type, also for the types the acme package does not know (dns-persist-01,
    dns-account-01: ``UnrecognizedChallenge``, whose ``typ`` is NotImplemented)."""
    typ = challenge.chall.typ
    if isinstance(typ, str):
        return typ
    return str(getattr(challenge.chall, "jobj", {}).get("type", "unknown"))


def failure_hint(name: str) -> str:
    """Appended to an upstream's refusal of a dns-persist-01 authorization."""
    return f" (publish the record `acme-ra upstream persist-record {name}` prints for this upstream's account)"


@dataclass(frozen=True)
class PersistRecord:
    name: str  # the domain the record is for
    issuer: str
    account_url: str
    wildcard: bool = False
    persist_until: int | None = None

    @property
    def owner(self) -> str:
        return f"{PERSIST_LABEL}.{self.name}."

    @property
    def value(self) -> str:
        parts = [self.issuer, f"accounturi={self.account_url}"]
        if self.wildcard:
            parts.append("policy=wildcard")
        if self.persist_until is not None:
            parts.append(f"persistUntil={self.persist_until}")
        return "; ".join(parts)

    def zone_line(self) -> str:
        """The record as a zone-file line (the value is one string: at most 255 octets)."""
        return f'{self.owner} IN TXT "{self.value}"'


def issuer_domain_names(directory: dict[str, Any]) -> list[str]:
    """The upstream's issuer domain names as its directory gives them (-02, else caaIdentities)."""
    meta = directory.get("meta") or {}
    for field in ("issuerDomainNames", "caaIdentities"):
        names = meta.get(field)
        if isinstance(names, list) and names:
            return [n for n in (normal_issuer_domain(str(v)) for v in names) if n]
    return []


def acme_upstream(settings: Settings, name: str | None) -> Upstream:
    catalog = load_catalog(settings)
    chosen = name or catalog.default
    upstream = catalog.upstreams.get(chosen)
    if upstream is None:
        raise UpstreamConfigError(f"no upstream named {chosen!r} (upstreams: {', '.join(catalog.upstreams)})")
    if not isinstance(upstream, Upstream):
        raise UpstreamConfigError(f"upstream {chosen!r} is not an ACME upstream: it has no account to name")
    return upstream


async def persist_record(
    settings: Settings,
    name: str,
    *,
    upstream_name: str | None = None,
    wildcard: bool = False,
    persist_days: int | None = None,
    issuer: str | None = None,
) -> PersistRecord:
    """The record that authorises ``upstream_name``'s CA to issue ``name`` to acme-ra's account
    there. Raises UpstreamConfigError or UpstreamUnavailable (one line each)."""
    upstream = acme_upstream(settings, upstream_name)
    bundle = str(upstream.ca_bundle) if upstream.ca_bundle else None
    async with httpx.AsyncClient(verify=tls_context(bundle), timeout=DIRECTORY_TIMEOUT_SECONDS,
                                 trust_env=False) as http:
        try:
            response = await http.get(upstream.directory_url)
            response.raise_for_status()
            directory = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise UpstreamUnavailable(f"upstream {upstream.name}: {upstream.directory_url}: {error}") from None
    offered = issuer_domain_names(directory if isinstance(directory, dict) else {})
    if issuer is not None:
        chosen = normal_issuer_domain(issuer)
        if offered and chosen not in offered:
            raise UpstreamConfigError(f"upstream {upstream.name} names the issuers {', '.join(offered)}, not {chosen}")
    elif offered:
        chosen = offered[0]
    else:
        raise UpstreamConfigError(f"upstream {upstream.name}'s directory names no issuer domain name "
                                  "(issuerDomainNames, caaIdentities): give --issuer")
    db = Database(settings.effective_database_url, pool_size=1)
    client = AcmeClient(upstream.directory_url, ca_bundle=bundle, timeout=settings.upstream_http_timeout_seconds,
                        upstream=upstream.name)
    try:
        account = await AccountStore(db, Sealer(sealing_secret(settings)), upstream, client).current()
    finally:
        await client.close()
        await db.dispose()
        await db.engine.dispose()
    until = None
    if persist_days is not None:
        until = int((dt.datetime.now(dt.UTC) + dt.timedelta(days=persist_days)).timestamp())
    domain = name.strip().rstrip(".").removeprefix("*.").lower()
    return PersistRecord(domain, chosen, account.url, wildcard or name.strip().startswith("*."), until)
