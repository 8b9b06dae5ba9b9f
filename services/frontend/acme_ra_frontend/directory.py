"""Directory and newNonce (RFC 8555 §7.1.1, §7.2)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from acme_ra.protocol.problems import malformed
from acme_ra_frontend.context import AcmeCall, resolve_provisioner
from acme_ra_frontend.dns_persist import dns_persist_meta
from acme_ra_frontend.render import json_response
from acme_ra_frontend.state import FrontendState
from acme_ra_frontend.urls import Urls


async def directory(request: Request) -> Response:
    state, urls = resolve_provisioner(request)
    return directory_response(state, urls)


async def directory_as_post(call: AcmeCall) -> Response:
    """RFC 8555 §6.3: the directory MUST also answer POST-as-GET (any other POST is a 405: the
    route's row)."""
    if not call.is_post_as_get:
        raise malformed("the directory takes POST-as-GET only (an empty payload)")
    return directory_response(call.state, call.urls)


def directory_response(state: FrontendState, urls: Urls) -> Response:
    meta: dict[str, object] = {"externalAccountRequired": state.settings.eab_required}
    if state.settings.terms_of_service_url:
        meta["termsOfService"] = state.settings.terms_of_service_url
    meta["profiles"] = state.settings.profile_descriptions
    if state.settings.caa_identity_list:
        meta["caaIdentities"] = state.settings.caa_identity_list
    meta.update(dns_persist_meta(state.settings, urls))
    if state.settings.website_url:
        meta["website"] = state.settings.website_url
    body = {
        "newNonce": f"{urls.prefix}/new-nonce",
        "newAccount": f"{urls.prefix}/new-account",
        "newOrder": f"{urls.prefix}/new-order",
        "revokeCert": f"{urls.prefix}/revoke-cert",
        "keyChange": f"{urls.prefix}/key-change",
        "renewalInfo": f"{urls.prefix}/renewal-info",
        "meta": meta,
    }
    return json_response(body, headers={"Cache-Control": "public, max-age=0, no-cache"})


async def new_nonce(request: Request) -> Response:
    """HEAD: 200; GET: 204. The nonce itself is added by the AcmeHeaders middleware."""
    resolve_provisioner(request)
    return Response(status_code=200 if request.method == "HEAD" else 204, headers={"Cache-Control": "no-store"})


async def new_nonce_post(call: AcmeCall) -> Response:
    return Response(status_code=200, headers={"Cache-Control": "no-store"})
