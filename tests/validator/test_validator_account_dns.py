"""The pure parts of dns-account-01 and dns-persist-01 against the drafts' own vectors: the
account label (draft-ietf-acme-dns-account-label), -02's hashed account URI (§10.2), the record
syntax and each reason a record of ours is refused. End to end: tests/integration/
test_dns_account_challenges.py."""

from __future__ import annotations

import datetime as dt

import pytest

from acme_ra_validator.account_dns import authz_lifetime
from acme_ra_validator.dns_account01 import account_label, validation_name
from acme_ra_validator.dns_persist01 import (
    MalformedRecord,
    PersistAccount,
    hashed_account_uri,
    parse_record,
    refusal,
    validation_names,
)

# -02 §10.2: RFC 7638's example thumbprint, its example account and prefix.
THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
ACCOUNT = PersistAccount("https://ca.example/acct/123", THUMBPRINT, "https://ca.example/account-hash/")
NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


def test_account_label_is_base32_of_the_first_ten_octets() -> None:
    assert account_label("https://example.com/acme/acct/ExampleAccount") == "_ujmmovf2vn55tgye"
    assert validation_name("Example.org.", "https://example.com/acme/acct/ExampleAccount") == \
        "_ujmmovf2vn55tgye._acme-challenge.Example.org"


def test_hashed_account_uri_matches_the_draft_vectors() -> None:
    assert hashed_account_uri(ACCOUNT.hash_prefix, "example.com", THUMBPRINT, ACCOUNT.url) == \
        "https://ca.example/account-hash/sha-256/5SQm7n6tPh2-PlLbCKGnViTXX5z19SCN4cPGQHSk-kw"
    assert hashed_account_uri(ACCOUNT.hash_prefix, "*", THUMBPRINT, ACCOUNT.url) == \
        "https://ca.example/account-hash/sha-256/NpDnSwUthQK8zCgFdefYxAdAVPnygMLbs9US6oO-5ug"


def test_parse_record() -> None:
    record = parse_record("Authority.Example.; accounturi=https://ca.example/acct/123 ;POLICY=wildcard; x-new=1;")
    assert record.issuer == "authority.example"
    assert record.parameters == {"accounturi": "https://ca.example/acct/123", "policy": "wildcard", "x-new": "1"}
    for bad in ("", "; accounturi=x", "ca.example; accounturi", "ca.example; a=1; a=2", "ca.example; a=b c",
                "ca.example;; a=1"):
        with pytest.raises(MalformedRecord):
            parse_record(bad)


def test_validation_names_go_up_to_two_labels() -> None:
    assert validation_names("a.b.example.com.") == ["a.b.example.com", "b.example.com", "example.com"]
    assert validation_names("example.com") == ["example.com"]


def reason(text: str, at: str = "example.com", domain: str = "example.com", wildcard: bool = False) -> str | None:
    return refusal(parse_record(text), at, domain, wildcard=wildcard, account=ACCOUNT, now=NOW)[0]


def test_what_validates_and_what_is_refused() -> None:
    plain = "ca.example; accounturi=https://ca.example/acct/123"
    hashed = "ca.example; accounturi=https://ca.example/account-hash/sha-256/5SQm7n6tPh2-PlLbCKGnViTXX5z19SCN4cPGQHSk-kw"
    opted_out = "ca.example; accounturi=https://ca.example/account-hash/sha-256/NpDnSwUthQK8zCgFdefYxAdAVPnygMLbs9US6oO-5ug"
    assert reason(plain) is None and reason(hashed) is None and reason(opted_out) is None
    assert reason(hashed, at="example.org", domain="example.org") is not None  # bound to example.com
    assert "another account" in (reason("ca.example; accounturi=https://ca.example/acct/124") or "")
    assert "no accounturi" in (reason("ca.example; policy=wildcard") or "")
    assert "policy=wildcard" in (reason(plain, wildcard=True) or "")
    assert "policy=wildcard" in (reason(plain, domain="www.example.com") or "")
    assert reason(plain + "; policy=WILDCARD", wildcard=True) is None
    assert reason(plain + "; policy=wildcard", domain="a.b.example.com", wildcard=True) is None
    assert "expired" in (reason(plain + f"; persistUntil={int(NOW.timestamp())}") or "")
    assert "not a Unix time" in (reason(plain + "; persistUntil=soon") or "")
    until = int(NOW.timestamp()) + 60
    assert refusal(parse_record(plain + f"; persistuntil={until}"), "example.com", "example.com", wildcard=False,
                   account=ACCOUNT, now=NOW) == (None, until)


def test_persist_until_bounds_the_authorization_lifetime() -> None:
    day = dt.timedelta(days=1)
    assert authz_lifetime(day, None, NOW) == day
    assert authz_lifetime(day, int(NOW.timestamp()) + 60, NOW) == dt.timedelta(seconds=60)
    assert authz_lifetime(day, int(NOW.timestamp()) + 7 * 86400, NOW) == day
