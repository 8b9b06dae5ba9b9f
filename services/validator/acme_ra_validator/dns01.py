"""dns-01 (RFC 8555 §8.4): a TXT record at ``_acme-challenge.<domain>`` holding the digest of
the key authorization. CNAMEs are followed by the resolver."""

from __future__ import annotations

import base64
import hashlib
import json

from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.resolver import NameNotFound, NameResolver, ResolutionError

CHALLENGE_LABEL = "_acme-challenge"
# How much of a wrong TXT value a problem detail quotes.
QUOTED_VALUE_CHARS = 128


def txt_record_value(key_authorization: str) -> str:
    """base64url (no padding) of SHA-256 of the key authorization."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def check_dns01(resolver: NameResolver, domain: str, key_authorization: str) -> None:
    """Return when one TXT record matches; raise ValidationFailure otherwise."""
    await check_txt_digest(resolver, f"{CHALLENGE_LABEL}.{domain.rstrip('.')}", key_authorization)


async def check_txt_digest(resolver: NameResolver, name: str, key_authorization: str) -> None:
    """Return when one TXT record at ``name`` holds the key authorization's digest (dns-01's
    value; dns-account-01 looks at another name); raise ValidationFailure otherwise."""
    try:
        values = await resolver.txt(name)
    except NameNotFound:
        raise ValidationFailure("unauthorized", f"No TXT record found at {name}") from None
    except ResolutionError as error:  # SERVFAIL, timeout, DNSSEC (resolver.LookupFailed and kin)
        raise ValidationFailure("dns", f"DNS problem: {error.reason} looking up TXT for {name}") from None
    if txt_record_value(key_authorization) in values:
        return
    more = f" (and {len(values) - 1} more)" if len(values) > 1 else ""
    raise ValidationFailure(
        "unauthorized",
        f"Incorrect TXT record {json.dumps(values[0][:QUOTED_VALUE_CHARS])}{more} found at {name}",
    )
