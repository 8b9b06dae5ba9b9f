"""CAA checked again at finalization when a name's validation is older than CAA_RECHECK_AFTER
(checklist V6; Boulder's RA does the same). The frontend does no DNS: it asks a validator over
NATS (``acme.rpc.caa``, acme_ra_validator.caa_recheck) and waits for the answer, with the
request's database connection given back meanwhile (``AcmeCall.without_connection``).
"""

from __future__ import annotations

import datetime as dt

import nats.errors
from pydantic import ValidationError

from acme_ra import bus
from acme_ra.db.models import utcnow
from acme_ra.protocol.problems import Problem
from acme_ra_frontend.context import AcmeCall
from acme_ra_frontend.repo import authz as repo_authz

# A validation whose CAA check is older than this is checked again at finalization (7 h as in
# Boulder; the CA/Browser Forum Baseline Requirements allow 8 h between CAA check and issuance).
CAA_RECHECK_AFTER = dt.timedelta(hours=7)


async def recheck_stale_caa(call: AcmeCall, authz_ids: list[str]) -> None:
    """Raise caa (403) or dns when CAA now forbids a stale name; 503 when no validator answers."""
    identities = call.state.settings.caa_identity_list
    if not identities or not authz_ids:
        return
    rows = await repo_authz.valid_dns_challenges(call.conn, authz_ids)
    cutoff = utcnow() - CAA_RECHECK_AFTER
    stale = [
        bus.CaaCheck(name=name, wildcard=wildcard, method=method)
        for name, wildcard, method, validated in rows
        if validated is None or validated < cutoff
    ]
    if not stale:
        return
    request = bus.CaaRecheckRequest(account_uri=call.urls.account(call.require_account().id), checks=stale)
    try:
        # Up to CAA_RPC_TIMEOUT_SECONDS: without a database connection (finalize's claim, after it,
        # is conditional, so an order that changed meanwhile is not finalized twice).
        message = await call.without_connection(lambda: call.state.nc.request(
            bus.SUBJECT_CAA_RPC, request.model_dump_json().encode(), timeout=bus.CAA_RPC_TIMEOUT_SECONDS
        ))
        reply = bus.CaaRecheckReply.model_validate_json(message.data)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
            ValidationError):
        raise Problem("serverInternal", "CAA cannot be checked again just now; try again shortly", 503,
                      headers={"Retry-After": "5"}) from None
    if reply.outcome == "permitted":
        return
    problem = reply.problem or {}
    type_ = problem.get("type", "caa")
    detail = problem.get("detail", "CAA forbids issuance")
    if type_ not in ("caa", "dns"):
        raise Problem("serverInternal", "CAA could not be checked again; try again later", 503,
                      headers={"Retry-After": "5"})
    raise Problem(type_, f"CAA checked again before issuance: {detail}")
