"""Accounts (RFC 8555 §7.3): newAccount, account POST-as-GET, update and deactivation, orders list."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import html
import logging
import re
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.exc import IntegrityError

from acme_ra import blocked_keys
from acme_ra.db.models import Account, AccountStatus, EabKey
from acme_ra.eab import sealing_purpose
from acme_ra.protocol import eab
from acme_ra.protocol import jws as jwslib
from acme_ra.protocol.jws import raw_key, thumbprint
from acme_ra.protocol.problems import Problem, malformed, unauthorized
from acme_ra.sealing import SealError
from acme_ra_frontend import ratelimits
from acme_ra_frontend.context import AcmeCall, resolve_provisioner
from acme_ra_frontend.render import account_json, json_response
from acme_ra_frontend.repo import accounts as repo
from acme_ra_frontend.repo.authentication import SigningAccount
from acme_ra_frontend.state import FrontendState
from acme_ra_frontend.urls import Urls

log = logging.getLogger("acme_ra.frontend.accounts")

# Why a blocked key is refused (acme_ra.blocked_keys).
BLOCKED_REASON = "a certificate for it was revoked for keyCompromise"

# Most contacts one account may list.
MAX_CONTACTS = 10
# Orders per page of an account's orders list.
ORDERS_PAGE_SIZE = 100
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# An orders-list cursor's parts: microseconds (up to year 9999) and a resource id (models.new_id).
_CURSOR_MICROS = re.compile(r"[0-9]{1,18}")
_ORDER_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Where a person agrees to changed terms of service (the userActionRequired problem's instance):
# the account id and a MAC of it and the terms' URL, so only whoever got the problem can agree.
TERMS_AGREEMENT = "/acme/{provisioner}/terms/{account_id}/{token}"
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


def check_contacts(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise malformed("contact must be an array of strings")
    if len(value) > MAX_CONTACTS:
        raise Problem("invalidContact", f"at most {MAX_CONTACTS} contacts")
    for contact in value:
        scheme, _, address = contact.partition(":")
        if scheme.lower() != "mailto":
            raise Problem("unsupportedContact", f"contact {contact[:100]!r}: only mailto: is supported")
        if "?" in address or "," in address or not _EMAIL.match(address) or len(address) > 254:
            raise Problem("invalidContact", f"contact {contact[:100]!r} is not a single valid email address")
    return list(value)


async def new_account(call: AcmeCall) -> Response:
    payload = call.payload()
    key_id = thumbprint(call.jwk)
    existing = await repo.by_thumbprint(call.session, key_id)
    if existing is not None:
        if existing.status != AccountStatus.valid:
            raise unauthorized(f"the account of this key is {existing.status}", 401)
        location = call.urls.account(existing.id)
        return json_response(account_json(existing, call.urls), 200, {"Location": location})
    if payload.get("onlyReturnExisting") is True:
        raise Problem("accountDoesNotExist", "no account exists with this key")
    if await blocked_keys.is_blocked(call.conn, raw_key(call.jwk)):
        raise Problem("badPublicKey", f"this key is blocked: {BLOCKED_REASON}")
    tos_url = call.state.settings.terms_of_service_url
    agreed = payload.get("termsOfServiceAgreed") is True
    if tos_url and not agreed:
        raise malformed(f"you must agree to the terms of service at {tos_url} (termsOfServiceAgreed)")
    contact = check_contacts(payload.get("contact"))
    settings = call.state.settings
    await ratelimits.spend(call.conn, ratelimits.Spend(
        "accounts-per-ip", ratelimits.client_network(ratelimits.client_address(call.request, call.state.trusted_proxies),
                                                     settings.limit_accounts_ipv4_prefix,
                                                     settings.limit_accounts_ipv6_prefix),
        settings.rate_new_accounts_per_ip_per_hour, ratelimits.HOUR, "new accounts from this address",
    ))
    binding = payload.get("externalAccountBinding")
    eab_key = None
    if binding is not None:
        eab_key = await verify_external_account(call, binding)
    elif call.state.settings.eab_required:
        raise Problem("externalAccountRequired", "this server requires an External Account Binding (ask your RA operator for a key)")
    account = Account(
        key_thumbprint=key_id,
        jwk=call.jws.jwk_json or call.jwk.to_json(),
        contact=contact,
        tos_agreed=agreed,
        eab_kid=eab_key.kid if eab_key else None,
    )
    if agreed and tos_url:
        account.tos_agreed_url = tos_url
    call.session.add(account)
    try:
        await call.session.flush()
    except IntegrityError:  # the same key registered concurrently
        raise Problem("malformed", "an account with this key was created concurrently; retry", 409) from None
    if eab_key is not None and not await repo.bind_eab_key(call.session, eab_key.kid, account.id):
        raise unauthorized("this External Account Binding key is already bound to another account")
    location = call.urls.account(account.id)
    body = account_json(account, call.urls)
    if binding is not None:
        body["externalAccountBinding"] = binding
    return json_response(body, 201, {"Location": location})


async def verify_external_account(call: AcmeCall, binding: Any) -> EabKey:
    kid, alg, signing_input, mac, payload_jwk = eab.parse_binding(binding, call.jws.url)
    key = await repo.eab_key(call.session, kid)
    if key is None or key.revoked_at is not None:
        raise unauthorized("unknown or revoked External Account Binding key id")
    if key.account_id is not None:
        raise unauthorized("this External Account Binding key is already bound to another account")
    try:
        hmac_key = call.state.sealer.open(key.hmac_key_sealed, sealing_purpose(kid))
    except SealError:
        log.error("EAB key %s cannot be opened: wrong ACME_RA_SECRET_KEY?", kid)
        raise
    eab.verify_binding_mac(alg, signing_input, mac, hmac_key)
    eab.check_binding_key(payload_jwk, call.jws.jwk_json or call.jwk.to_json())
    return key


def owned_account(call: AcmeCall) -> SigningAccount:
    account = call.require_account()
    if call.request.path_params["account_id"] != account.id:
        raise unauthorized("the account URL does not match the JWS kid")
    return account


async def account(call: AcmeCall) -> Response:
    owned_account(call)
    acct = await call.orm_account()
    if not call.is_post_as_get:
        payload = call.payload()
        status = payload.get("status")
        if status is not None and status != acct.status:
            if status != AccountStatus.deactivated:
                raise malformed("an account's status can only be changed to deactivated")
            await deactivate(call, acct)
        if "contact" in payload:
            acct.contact = check_contacts(payload["contact"])
        await call.session.flush()
    return json_response(account_json(acct, call.urls), 200, {"Location": call.urls.account(acct.id)})


async def deactivate(call: AcmeCall, acct: Account) -> None:
    """Deactivation is final; pending orders and authorizations go with it (§7.3.6)."""
    acct.status = AccountStatus.deactivated
    await repo.end_pending_work(call.session, acct.id)


async def account_orders(call: AcmeCall) -> Response:
    """The account's orders list (§7.1.2.1), ORDERS_PAGE_SIZE at a time; ``Link: rel="next"`` names
    the page after the last order listed (a keyset, not an offset: stable while orders are added)."""
    acct = owned_account(call)
    after = order_cursor(call.request.query_params.get("after"))
    rows = await repo.order_page(call.session, acct.id, after, ORDERS_PAGE_SIZE + 1)
    page = rows[:ORDERS_PAGE_SIZE]
    headers = {}
    if len(rows) > ORDERS_PAGE_SIZE:
        last_id, last_created = page[-1]
        cursor = f"{(last_created - EPOCH) // dt.timedelta(microseconds=1)}.{last_id}"
        headers["Link"] = f'<{call.urls.account_orders(acct.id)}?after={cursor}>;rel="next"'
    return json_response({"orders": [call.urls.order(order_id) for order_id, _ in page]}, 200, headers)


def order_cursor(text: str | None) -> tuple[dt.datetime, str] | None:
    """``after`` of the orders list: "<created_at in µs since 1970>.<order id>", as the server
    wrote it into a previous page's Link."""
    if text is None:
        return None
    micros, _, order_id = text.partition(".")
    try:
        if _CURSOR_MICROS.fullmatch(micros) and _ORDER_ID.fullmatch(order_id):
            return EPOCH + dt.timedelta(microseconds=int(micros)), order_id
    except OverflowError:  # past year 9999
        pass
    raise malformed("after must be the cursor of a previous page's Link header")


async def key_change(call: AcmeCall) -> Response:
    """Account key rollover (§7.3.5): the payload is a JWS signed by the new key."""
    acct = await call.orm_account()
    inner = jwslib.parse_inner_jws(call.jws.payload, expect_nonce=False)
    if inner.url != call.jws.url:
        raise malformed("the inner JWS url must equal the outer JWS url")
    assert inner.jwk is not None
    jwslib.verify_signature(inner, inner.jwk)
    body = jwslib.payload_json(inner)
    if body.get("account") != call.urls.account(acct.id):
        raise malformed("the inner payload's account is not the signing account")
    try:
        old_key, _ = jwslib.load_jwk(body.get("oldKey"))
    except Problem:
        raise malformed("the inner payload's oldKey is not a valid JWK") from None
    if thumbprint(old_key) != acct.key_thumbprint:
        raise unauthorized("oldKey is not the account's current key")
    new_thumbprint = thumbprint(inner.jwk)
    if new_thumbprint == acct.key_thumbprint:
        raise Problem("badPublicKey", "the new key is the current key")
    if await blocked_keys.is_blocked(call.conn, raw_key(inner.jwk)):
        raise Problem("badPublicKey", f"the new key is blocked: {BLOCKED_REASON}")
    holder = await repo.id_by_thumbprint(call.session, new_thumbprint)
    if holder is not None:
        raise Problem(
            "malformed", "the new key is already in use by another account", 409,
            headers={"Location": call.urls.account(holder)},
        )
    acct.key_thumbprint = new_thumbprint
    acct.jwk = inner.jwk_json or inner.jwk.to_json()
    try:
        await call.session.flush()
    except IntegrityError:
        raise Problem("malformed", "the new key was registered concurrently", 409) from None
    return json_response(account_json(acct, call.urls), 200, {"Location": call.urls.account(acct.id)})


# Terms of service (RFC 8555 §7.3.3) -------------------------------------------------------------

def terms_token(state: FrontendState, account_id: str, tos_url: str) -> str:
    key = hashlib.sha256(b"acme-ra terms agreement\x00" + state.settings.sealing_secret()).digest()
    mac = hmac.new(key, f"{account_id}\n{tos_url}".encode(), hashlib.sha256).digest()
    return mac[:18].hex()


def terms_agreement_url(state: FrontendState, urls: Urls, account_id: str, tos_url: str) -> str:
    return f"{urls.prefix}/terms/{account_id}/{terms_token(state, account_id, tos_url)}"


async def check_current_terms(call: AcmeCall) -> None:
    """403 userActionRequired while the account has not agreed to the terms now advertised."""
    tos_url = call.state.settings.terms_of_service_url
    acct = call.account
    if not tos_url or acct is None or acct.tos_agreed_url == tos_url:
        return
    if acct.tos_agreed_url is None and acct.tos_agreed:
        # agreed before the agreed URL was recorded: these terms
        await repo.record_agreed_terms(call.conn, acct.id, tos_url)
        return
    raise Problem(
        "userActionRequired",
        f"the terms of service changed: read {tos_url} and agree at the instance URL, then retry",
        headers={"Link": f'<{tos_url}>;rel="terms-of-service"'},
        extra={"instance": terms_agreement_url(call.state, call.urls, acct.id, tos_url)},
    )


async def terms_account(request: Request) -> tuple[FrontendState, Account, str]:
    state, _urls = resolve_provisioner(request)
    tos_url = state.settings.terms_of_service_url
    account_id = request.path_params["account_id"]
    expected = terms_token(state, account_id, tos_url) if tos_url else ""
    token = request.path_params["token"].encode(errors="replace")  # compare_digest refuses non-ASCII text
    if not expected or not hmac.compare_digest(expected.encode(), token):
        raise Problem("malformed", "no such terms agreement (the terms may have changed again)", 404)
    async with state.db.sessions() as session:
        acct = await repo.by_id(session, account_id)
    if acct is None:
        raise Problem("malformed", "no such account", 404)
    return state, acct, tos_url


# The agreement page: no scripts, no framing (a click on "I agree" must be the account holder's).
TERMS_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def terms_page(text: str, tos_url: str, form: bool) -> HTMLResponse:
    link = html.escape(tos_url)
    button = '<form method="post"><button type="submit">I agree to these terms</button></form>' if form else ""
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><title>Terms of service</title>"
        f'<p>{text}</p><p>Terms of service: <a href="{link}">{link}</a></p>{button}',
        headers=TERMS_PAGE_HEADERS,
    )


async def terms_agreement(request: Request) -> Response:
    """GET: the terms' URL and an agree button; POST (the form): record the agreement."""
    state, acct, tos_url = await terms_account(request)
    if request.method == "POST":
        async with state.db.transaction() as session:
            await repo.record_agreed_terms(session, acct.id, tos_url)
        log.info("account agreed to the terms of service", extra={"account_id": acct.id, "terms": tos_url})
        return terms_page("Agreement recorded: the ACME client of this account may retry now.", tos_url, False)
    if acct.tos_agreed_url == tos_url:
        return terms_page("This ACME account has agreed to the current terms of service.", tos_url, False)
    return terms_page("The terms of service of this ACME server changed. This ACME account must agree "
                      "to them before it orders certificates again.", tos_url, True)
