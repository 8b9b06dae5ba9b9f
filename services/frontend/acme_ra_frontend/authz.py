"""Authorizations and challenges (RFC 8555 §7.5): polling, responding, deactivation."""

from __future__ import annotations

from fastapi.responses import Response

from acme_ra import bus
from acme_ra.db.lifecycle import refresh_order_status
from acme_ra.db.models import AuthzStatus, ChallengeStatus, utcnow
from acme_ra.protocol.problems import malformed, not_found, unauthorized
from acme_ra_frontend.context import AcmeCall
from acme_ra_frontend.render import authz_json, challenge_json, json_response
from acme_ra_frontend.repo import authz as repo
from acme_ra_frontend.repo.authz import AuthzRow, ChallengeRow


async def load_authz(call: AcmeCall, authz_id: str) -> tuple[AuthzRow, list[ChallengeRow]]:
    """The caller's authorization and its challenges (one statement), with expiry applied."""
    found = repo.authz_from_rows(await call.read(repo.AUTHZ_READ, authz_id))
    if found is None:
        raise not_found("authorization")
    authz, challenges = found
    if authz.account_id != call.require_account().id:
        raise unauthorized("this authorization belongs to another account")
    if authz.status in (AuthzStatus.pending, AuthzStatus.valid) and authz.expires <= utcnow():
        authz.status = AuthzStatus.expired
        await repo.expire_authz(call.conn, authz.id)
    return authz, challenges


def retry_after_headers(call: AcmeCall, challenges: list[ChallengeRow]) -> dict[str, str]:
    if any(c.status == ChallengeStatus.processing for c in challenges):
        return {"Retry-After": str(call.state.settings.retry_after_seconds)}
    return {}


async def authorization(call: AcmeCall) -> Response:
    authz, challenges = await load_authz(call, call.request.path_params["authz_id"])
    if not call.is_post_as_get:
        payload = call.payload()
        if payload.get("status") is not None:
            if payload["status"] != AuthzStatus.deactivated:
                raise malformed("an authorization's status can only be changed to deactivated")
            if authz.status not in (AuthzStatus.pending, AuthzStatus.valid):
                raise malformed(f"an authorization that is {authz.status} cannot be deactivated")
            await deactivate_authz(call, authz)
    issuers = call.state.settings.dns_persist_issuer_domain_list
    return json_response(authz_json(authz, challenges, call.urls, issuers), 200, retry_after_headers(call, challenges))


async def deactivate_authz(call: AcmeCall, authz: AuthzRow) -> None:
    authz.status = AuthzStatus.deactivated
    await repo.deactivate_authz(call.conn, authz.id)
    for order_id in await repo.open_orders_of_authz(call.session, authz.id):
        await refresh_order_status(
            call.session, order_id, {"type": "unauthorized", "detail": "an authorization was deactivated"}
        )


async def challenge(call: AcmeCall) -> Response:
    authz, challenges = await load_authz(call, call.request.path_params["authz_id"])
    found = next((c for c in challenges if c.id == call.request.path_params["challenge_id"]), None)
    if found is None:
        raise not_found("challenge")
    if not call.is_post_as_get:
        call.payload()  # any JSON object; its fields are ignored (§7.5.1)
        if found.status == ChallengeStatus.pending:
            if authz.status != AuthzStatus.pending:
                raise malformed(f"the authorization is {authz.status}; its challenges can no longer be answered")
            if await start_validation(call, found):
                found.status = ChallengeStatus.processing
                call.respond_when_done(found.id, found, lambda conn: repo.challenge(conn, found.id),
                                       lambda row: challenge_response(call, row))
    return challenge_response(call, found)


def challenge_response(call: AcmeCall, found: ChallengeRow) -> Response:
    headers = {"Link": f'<{call.urls.authz(found.authz_id)}>;rel="up"', **retry_after_headers(call, [found])}
    return json_response(challenge_json(found, call.urls, call.state.settings.dns_persist_issuer_domain_list), 200,
                         headers)


async def start_validation(call: AcmeCall, found: ChallengeRow) -> bool:
    """Claim the challenge (pending → processing, one conditional UPDATE) and queue one validation
    job after commit. Another challenge of the same authorization already processing blocks this one."""
    if not await repo.claim_challenge(call.conn, found.id, found.authz_id, utcnow()):
        return False
    call.publish_after_commit(
        bus.SUBJECT_VALIDATE, bus.ValidateJob(challenge_id=found.id), f"validate-{found.id}"
    )
    return True
