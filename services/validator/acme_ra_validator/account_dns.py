"""The two challenge types bound to the account rather than to a token: dns-account-01
(dns_account01.py) and dns-persist-01 (dns_persist01.py), as the worker dispatches them.

Both need the account URL the frontend serves, built from the provisioner of the order that holds
the authorization (``ValidationOptions.account_url``). A valid dns-persist-01 record's
persistUntil bounds the authorization's lifetime (-02 §4.1: never ``expires`` later than it).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from acme_ra_validator.dns_account01 import check_dns_account01
from acme_ra_validator.dns_persist01 import PersistAccount, account_hash_prefix, check_dns_persist01
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.resolver import NameResolver

if TYPE_CHECKING:
    from acme_ra_validator.worker import ChallengeToCheck, ValidationOptions

ACCOUNT_DNS_TYPES = ("dns-account-01", "dns-persist-01")


async def check_account_dns(
    resolver: NameResolver, options: ValidationOptions, challenge: ChallengeToCheck, key_authorization: str
) -> int | None:
    """Check a dns-account-01 or dns-persist-01 challenge: the persistUntil of the record that
    validated a dns-persist-01 one (else None); raises ValidationFailure."""
    if challenge.identifier_type != "dns":
        raise ValidationFailure("malformed", f"{challenge.type} validates DNS names only, not {challenge.identifier_type}")
    if challenge.provisioner is None:
        raise ValidationFailure("unauthorized", f"{challenge.type}: the authorization belongs to no order, so to no "
                                "account URL")
    account_url = options.account_url(challenge.provisioner, challenge.account_id)
    if challenge.type == "dns-account-01":
        await check_dns_account01(resolver, challenge.identifier_value, account_url, key_authorization)
        return None
    if not options.persist_issuer_domains:
        raise ValidationFailure("malformed", "dns-persist-01 is not offered (ACME_RA_DNS_PERSIST_ISSUER_DOMAINS is empty)")
    account = PersistAccount(account_url, challenge.key_thumbprint,
                             account_hash_prefix(options.external_url, challenge.provisioner))
    return await check_dns_persist01(resolver, challenge.identifier_value, wildcard=challenge.wildcard,
                                     account=account, issuer_domains=options.persist_issuer_domains)


def authz_lifetime(lifetime: dt.timedelta, persist_until: int | None, now: dt.datetime | None = None) -> dt.timedelta:
    """The authorization's lifetime: ``lifetime``, or less when a persistUntil ends it sooner."""
    if persist_until is None:
        return lifetime
    left = dt.datetime.fromtimestamp(persist_until, dt.UTC) - (now or dt.datetime.now(dt.UTC))
    return max(min(lifetime, left), dt.timedelta(0))
