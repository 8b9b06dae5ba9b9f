"""Database rows to ACME JSON objects (RFC 8555 §7.1), and JSON responses. Internal ids never leak
beyond URLs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi.responses import Response

from acme_ra.db.models import Account, OrderStatus
from acme_ra.protocol.problems import render_data
from acme_ra_frontend.dns_persist import dns_persist_fields
from acme_ra_frontend.repo.authz import AuthzRow, ChallengeRow
from acme_ra_frontend.repo.orders import OrderRow
from acme_ra_frontend.urls import Urls


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, content_type: str = "application/json"
) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=content_type)


def timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def account_json(account: Account, urls: Urls) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": account.status,
        "contact": account.contact or [],
        "orders": urls.account_orders(account.id),
        "key": account.jwk,
    }
    if account.tos_agreed:
        body["termsOfServiceAgreed"] = True
    return body


def order_json(order: OrderRow, authz_ids: list[str], urls: Urls) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": order.status,
        "expires": timestamp(order.expires),
        "identifiers": order.identifiers,
        "authorizations": [urls.authz(a) for a in authz_ids],
        "finalize": urls.finalize(order.id),
    }
    if order.profile:
        body["profile"] = order.profile
    if order.replaces:
        body["replaces"] = order.replaces
    if order.not_before:
        body["notBefore"] = timestamp(order.not_before)
    if order.not_after:
        body["notAfter"] = timestamp(order.not_after)
    if order.error and order.status == OrderStatus.invalid:
        body["error"] = render_data(order.error)
    if order.certificate_id and order.status == OrderStatus.valid:
        body["certificate"] = urls.certificate(order.certificate_id)
    return body


def challenge_json(challenge: ChallengeRow, urls: Urls, issuer_domains: Sequence[str] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": challenge.type,
        "url": urls.challenge(challenge.authz_id, challenge.id),
        "status": challenge.status,
    }
    if challenge.type == "dns-persist-01":
        body.update(dns_persist_fields(issuer_domains))  # no token: the record is the account's
    else:
        body["token"] = challenge.token
    if challenge.validated:
        body["validated"] = timestamp(challenge.validated)
    if challenge.error:
        body["error"] = render_data(challenge.error)
    return body


def authz_json(
    authz: AuthzRow, challenges: list[ChallengeRow], urls: Urls, issuer_domains: Sequence[str] = ()
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "identifier": {"type": authz.identifier_type, "value": authz.identifier_value},
        "status": authz.status,
        "expires": timestamp(authz.expires),
        "challenges": [challenge_json(c, urls, issuer_domains) for c in challenges],
    }
    if authz.wildcard:
        body["wildcard"] = True
    return body
