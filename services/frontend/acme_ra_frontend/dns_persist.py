"""What the frontend advertises for dns-persist-01 (draft-ietf-acme-dns-persist-02 §3):
the issuer domain names (ACME_RA_DNS_PERSIST_ISSUER_DOMAINS) in each challenge and in the
directory, and the directory's ``accountHashPrefix`` for -02's hashed account URIs.

The challenge carries the names under -02's ``issuerDomainNames`` and -00/-01's
``issuer-domain-names`` (lego, certbot plugins); the directory's ``caaIdentities`` includes them
too, where acme.sh 3.1.4 and -02 (§3.2: every issuer domain name is among the caaIdentities)
look for them.
"""

from __future__ import annotations

from collections.abc import Sequence

from acme_ra.config import Settings
from acme_ra_frontend.urls import Urls


def dns_persist_fields(issuer_domains: Sequence[str]) -> dict[str, list[str]]:
    names = list(issuer_domains)
    return {"issuerDomainNames": names, "issuer-domain-names": names}


def account_hash_prefix(urls: Urls) -> str:
    """Under the provisioner's URLs; the validator builds the same (dns_persist01.account_hash_prefix)."""
    return f"{urls.prefix}/account-hash/"


def dns_persist_meta(settings: Settings, urls: Urls) -> dict[str, object]:
    """The directory meta fields of dns-persist-01, when it is offered."""
    issuers = settings.dns_persist_issuer_domain_list
    if "dns-persist-01" not in settings.challenge_type_list or not issuers:
        return {}
    identities = list(dict.fromkeys([*settings.caa_identity_list, *issuers]))
    return {"caaIdentities": identities, "issuerDomainNames": issuers, "accountHashPrefix": account_hash_prefix(urls)}
