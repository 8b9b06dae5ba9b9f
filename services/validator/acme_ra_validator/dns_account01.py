"""dns-account-01 (draft-ietf-acme-dns-account-label-02): dns-01 at a name of the account's own,
``_<label>._acme-challenge.<domain>``, so several accounts (clients, sites) can validate one
domain at once without overwriting each other's record.

``<label>`` is the lowercase base32 (RFC 4648, no padding) of the first 10 octets of SHA-256 of
the account URL: 16 characters. The record's value is dns-01's (``dns01.txt_record_value``).
"""

from __future__ import annotations

import base64
import hashlib

from acme_ra_validator.dns01 import CHALLENGE_LABEL, check_txt_digest
from acme_ra_validator.resolver import NameResolver

# Octets of SHA-256(account URL) that make the label (the draft's [0:10]).
LABEL_DIGEST_OCTETS = 10


def account_label(account_url: str) -> str:
    """``_`` and the 16 lowercase base32 characters of SHA-256(account URL)[0:10]."""
    digest = hashlib.sha256(account_url.encode("utf-8")).digest()[:LABEL_DIGEST_OCTETS]
    return "_" + base64.b32encode(digest).decode("ascii").lower()


def validation_name(domain: str, account_url: str) -> str:
    return f"{account_label(account_url)}.{CHALLENGE_LABEL}.{domain.rstrip('.')}"


async def check_dns_account01(resolver: NameResolver, domain: str, account_url: str, key_authorization: str) -> None:
    """Return when one TXT record at the account's name matches; raise ValidationFailure otherwise."""
    await check_txt_digest(resolver, validation_name(domain, account_url), key_authorization)
