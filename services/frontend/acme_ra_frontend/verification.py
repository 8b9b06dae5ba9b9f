"""JWS verification (RFC 8555 §6.2–6.5): the request's JWS against its URL and the route's
``Auth``, the signing key or account, the signature, and the nonce's redemption.

The SQL is ``repo.authentication``'s; what is here decides the order of the checks. In a
transaction the nonce is redeemed first and a forged request rolls its redemption back (N6);
outside one the signature is checked before the nonce is redeemed, so a forgery does not burn it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from josepy.jwk import JWK
from sqlalchemy.ext.asyncio import AsyncConnection

from acme_ra.db.models import AccountStatus
from acme_ra.protocol import jws as jwslib
from acme_ra.protocol.problems import Problem, bad_nonce, malformed, unauthorized
from acme_ra_frontend.context import Auth
from acme_ra_frontend.repo import authentication
from acme_ra_frontend.repo.authentication import SigningAccount
from acme_ra_frontend.repo.reads import Read
from acme_ra_frontend.state import FrontendState
from acme_ra_frontend.urls import Urls

JOSE_CONTENT_TYPE = "application/jose+json"

# Parsed account keys by their JSON text: a key never changes under the same text, so a cached key
# is never stale (key rollover stores another text; status is read on every request).
JWK_CACHE_SIZE = 10_000
_jwk_cache: dict[str, JWK] = {}
# The key text each account's requests were last verified with in this process, by account id. Only
# a hint: the statement that redeems the nonce checks it is still the account's (key rollover on
# another replica), so a stale entry costs one more round trip, never a wrong answer.
_verified_keys: dict[str, str] = {}


@dataclass(slots=True)
class Verified:
    """A verified request: its key, its account (None: signed with a JWK), and the route's
    resource rows when they were read with the authentication."""

    key: JWK
    account: SigningAccount | None
    prefetched: list[Any] | None


def is_jose(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == JOSE_CONTENT_TYPE


async def read_jws(request: Request, state: FrontendState, auth: Auth) -> jwslib.ParsedJws:
    """The request's JWS, its URL the request's own and signed as ``auth`` says. The body's size is
    already bounded (http_limits.BodyLimit, ACME_RA_HTTP_MAX_BODY_BYTES)."""
    if not is_jose(request):
        raise Problem("malformed", f"Content-Type must be {JOSE_CONTENT_TYPE}", 415)
    parsed = jwslib.parse_jws(await request.body())
    expected_url = state.settings.external_url + request.url.path
    if request.url.query:
        expected_url += "?" + request.url.query
    if parsed.url != expected_url:
        raise unauthorized(f"JWS url {parsed.url!r} does not match the request URL {expected_url!r}")
    if auth is Auth.JWK and parsed.jwk is None:
        raise malformed("this request must be signed with a jwk, not a kid")
    if auth is Auth.KID and parsed.kid is None:
        raise malformed("this request must be signed with the account's kid, not a jwk")
    return parsed


async def verify(conn: AsyncConnection, state: FrontendState, urls: Urls, parsed: jwslib.ParsedJws, in_transaction: bool,
                 read: Read | None, read_key: str | None) -> Verified:
    """Check the signature and redeem the nonce on ``conn``: a ``Problem`` unless both hold.
    ``read`` of ``read_key``: the route's resource, read with the authentication where it can be."""
    try:
        nonce_expires, nonce_problem = state.nonces.check(parsed.nonce), None
    except Problem as problem:  # raised after the account and signature checks
        nonce_expires, nonce_problem = None, problem
    prefetched = None
    account = None
    if parsed.kid is None:
        assert parsed.jwk is not None
        key = parsed.jwk
        fresh = await authentication.redeem_nonce(conn, parsed.nonce, nonce_expires)
        jwslib.verify_signature(parsed, key)  # a forged request rolls the redemption back (N6)
    elif not in_transaction:
        account, key, fresh, prefetched = await _verify_outside_transaction(
            conn, urls, parsed, nonce_expires, read, read_key)
    else:
        account_id = urls.account_id_from_kid(parsed.kid)
        if account_id is None:
            _valid(None)
        found = await authentication.account_and_redeem(conn, account_id or "", parsed.nonce, nonce_expires,
                                                        read, read_key)
        account, fresh, prefetched = _valid(found.account), found.fresh, found.resource
        key = parse_account_key(account.jwk_text)
        jwslib.verify_signature(parsed, key)
        _remember_account_key(account)
    if nonce_problem is not None:
        raise nonce_problem
    if not fresh:
        raise bad_nonce("nonce has already been used")
    return Verified(key, account, prefetched)


async def _verify_outside_transaction(
    conn: AsyncConnection, urls: Urls, parsed: jwslib.ParsedJws, expires: dt.datetime | None, read: Read | None,
    read_key: str | None,
) -> tuple[SigningAccount, JWK, bool, list[Any] | None]:
    """No redemption to roll back: the signature is checked before the nonce is redeemed. Two
    statements; one where the database can (``authentication.redeems_with_account``) when this
    process has verified the account's key before: the signature is checked with that key, then
    one statement redeems the nonce on condition that the key is still the account's, and reads the
    account and the route's resource."""
    assert parsed.kid is not None
    account_id = urls.account_id_from_kid(parsed.kid)
    known = _verified_keys.get(account_id) if account_id else None
    if account_id and known is not None and expires is not None and authentication.redeems_with_account(conn):
        key = parse_account_key(known)
        try:
            jwslib.verify_signature(parsed, key)
        except Problem:
            pass  # perhaps signed with a newer key: checked below against the stored one
        else:
            found = await authentication.account_and_redeem_if_key(
                conn, account_id, known, parsed.nonce, expires, read, read_key)
            if found.account is None or found.account.jwk_text == known:
                return _valid(found.account), key, found.fresh, found.resource
        _verified_keys.pop(account_id, None)
    account = _valid(None if account_id is None else await authentication.account(conn, account_id))
    key = parse_account_key(account.jwk_text)
    jwslib.verify_signature(parsed, key)
    _remember_account_key(account)
    return account, key, await authentication.redeem_nonce(conn, parsed.nonce, expires), None


def _valid(account: SigningAccount | None) -> SigningAccount:
    """The account read for a request, refused unless it exists and is valid."""
    if account is None:
        raise Problem("accountDoesNotExist", "no account exists with the key id given in the JWS")
    if account.status != AccountStatus.valid:
        raise unauthorized(f"account is {account.status}", 401)
    return account


def _remember_account_key(account: SigningAccount) -> None:
    if len(_verified_keys) >= JWK_CACHE_SIZE:
        _verified_keys.clear()
    _verified_keys[account.id] = account.jwk_text


def parse_account_key(jwk_text: str) -> JWK:
    cached = _jwk_cache.get(jwk_text)
    if cached is not None:
        return cached
    if len(_jwk_cache) >= JWK_CACHE_SIZE:
        _jwk_cache.clear()
    key = JWK.from_json(orjson.loads(jwk_text))
    assert isinstance(key, JWK)
    _jwk_cache[jwk_text] = key
    return key
