"""The admin API under ``/api/``: bearer-token auth, one route per operation, JSON in and out.

Every route calls :class:`acme_ra_admin.operations.AdminOperations`; its errors become
``{"detail": "..."}`` with their status. A missing or wrong token gets 401 and a log line, from the
gate (:mod:`acme_ra_admin.gate`), before the request's body is read.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from acme_ra.db import inventory
from acme_ra.db.audit import Actor, AuditFilter
from acme_ra.db.inventory import DURATION_PATTERN, parse_duration
from acme_ra.db.models import AccountStatus, OrderStatus
from acme_ra_admin import schemas
from acme_ra_admin.operations import AdminOperations
from acme_ra_admin.repository import DEFAULT_LIMIT, MAX_LIMIT

log = logging.getLogger("acme_ra_admin.api")

PREFIX = "/api"
bearer = HTTPBearer(auto_error=False, description="a token made with `acme-ra admin-token create`")

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows to return")]
Search = Annotated[str | None, Query(max_length=200, description="a name (or part of one); for certificates "
                                     "also a serial number (hex, any case, colons optional)")]
Offset = Annotated[int, Query(ge=0, description="rows to skip")]


def client_address(request: Request) -> str:
    """The peer's address; when the peer is in ACME_RA_TRUSTED_PROXIES, the rightmost
    X-Forwarded-For hop that is not itself a trusted proxy (those to its left are the client's
    own words)."""
    peer = request.client.host if request.client else "unknown"
    proxies = getattr(request.app.state, "trusted_proxies", [])

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in proxies)

    if not trusted(peer):
        return peer
    hops = [hop.strip() for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer


async def require_token(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """The id of the caller's live admin token, which the gate (acme_ra_admin.gate) checked before
    the body was read; 401 if it did not (never reached when it runs)."""
    token_id: str | None = getattr(request.state, "admin_token_id", None)
    if token_id is None:
        raise HTTPException(401, "a valid admin bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return token_id


def operations(request: Request) -> AdminOperations:
    ops: AdminOperations = request.app.state.ops
    return ops


def actor(request: Request) -> Actor:
    """Who calls, for the audit log: the token the gate checked, and the client's address."""
    return Actor.token(request.state.admin_token_id, getattr(request.state, "admin_token_label", ""),
                       client_address(request))


Ops = Annotated[AdminOperations, Depends(operations)]
Who = Annotated[Actor, Depends(actor)]
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": schemas.ErrorBody, "description": "no, wrong, revoked or expired bearer token"},
    403: {"model": schemas.ErrorBody, "description": "a change asked with a read-only token"},
    404: {"model": schemas.ErrorBody, "description": "no such resource"},
}

router = APIRouter(prefix=PREFIX, dependencies=[Depends(require_token)], responses=ERRORS)


@router.get("/accounts", tags=["accounts"])
async def list_accounts(ops: Ops, status: AccountStatus | None = None, limit: Limit = DEFAULT_LIMIT,
                        offset: Offset = 0) -> list[schemas.Account]:
    return await ops.list_accounts(status.value if status else None, limit, offset)


@router.get("/accounts/{account_id}", tags=["accounts"])
async def show_account(ops: Ops, account_id: str) -> schemas.Account:
    return await ops.get_account(account_id)


@router.post("/accounts/{account_id}/deactivate", tags=["accounts"],
             responses={409: {"model": schemas.ErrorBody, "description": "not a valid account"}})
async def deactivate_account(ops: Ops, who: Who, account_id: str) -> schemas.Account:
    """Deactivate an account (its status becomes `revoked`: RFC 8555's word when the server does it)."""
    return await ops.deactivate_account(account_id, actor=who)


@router.get("/eab-keys", tags=["eab-keys"])
async def list_eab_keys(ops: Ops) -> list[schemas.EabKey]:
    return await ops.list_eab_keys()


@router.post("/eab-keys", tags=["eab-keys"], status_code=201,
             responses={400: {"model": schemas.ErrorBody, "description": "bad policy rule or profile"}})
async def create_eab_key(ops: Ops, who: Who, body: schemas.EabKeyCreate) -> schemas.NewEabKey:
    """Create an EAB key; the HMAC key is in this answer only."""
    return await ops.create_eab_key(body, actor=who)


@router.post("/eab-keys/{kid}/revoke", tags=["eab-keys"],
             responses={409: {"model": schemas.ErrorBody, "description": "already revoked"}})
async def revoke_eab_key(ops: Ops, who: Who, kid: str) -> schemas.EabKey:
    return await ops.revoke_eab_key(kid, actor=who)


@router.get("/orders", tags=["orders"])
async def list_orders(ops: Ops, status: OrderStatus | None = None,
                      account: Annotated[str | None, Query(description="account id")] = None,
                      limit: Limit = DEFAULT_LIMIT, offset: Offset = 0, q: Search = None) -> list[schemas.Order]:
    return await ops.list_orders(status.value if status else None, account, limit, offset, q)


@router.get("/orders/{order_id}", tags=["orders"])
async def show_order(ops: Ops, order_id: str) -> schemas.OrderDetail:
    return await ops.get_order(order_id)


@router.get("/certificates", tags=["certificates"])
async def list_certificates(
    ops: Ops, account: Annotated[str | None, Query(description="account id")] = None,
    revoked: bool | None = None, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0,
    expiring: Annotated[str | None, Query(description="not yet expired, expiring within this: 30d, 12h, 2w",
                                          pattern=DURATION_PATTERN)] = None,
    upstream: Annotated[str | None, Query(description="issued through this upstream (lab: the lab CA)")] = None,
    profile: Annotated[str | None, Query(description="issued under this profile")] = None,
    issuer: Annotated[str | None, Query(description="the issuer's name contains this (any case)")] = None,
    eab_kid: Annotated[str | None, Query(description="the account registered with this EAB key")] = None,
    unreplaced: Annotated[bool, Query(description="only those no later certificate for the same names "
                                                  "replaced (not revoked)")] = False,
    q: Search = None,
) -> list[schemas.Certificate]:
    """Newest first; soonest expiry first with ``expiring``."""
    wanted = inventory.CertificateFilter(expiring_within=parse_duration(expiring) if expiring else None,
                                         upstream=upstream, profile=profile, issuer=issuer, eab_kid=eab_kid,
                                         unreplaced=unreplaced)
    return await ops.list_certificates(account, revoked, limit, offset, wanted, q)


@router.get("/certificates/{certificate}", tags=["certificates"])
async def show_certificate(ops: Ops, certificate: str) -> schemas.CertificateDetail:
    """By certificate id or serial number (hex)."""
    return await ops.get_certificate(certificate)


@router.post("/certificates/{certificate}/revoke", tags=["certificates"], responses={
    400: {"model": schemas.ErrorBody, "description": "reason not allowed"},
    409: {"model": schemas.ErrorBody, "description": "already revoked"},
    502: {"model": schemas.ErrorBody, "description": "the upstream CA refused"},
    503: {"model": schemas.ErrorBody, "description": "the signer or the upstream CA cannot be reached"},
})
async def revoke_certificate(ops: Ops, who: Who, certificate: str,
                             body: schemas.RevokeRequest | None = None) -> schemas.Revocation:
    """Revoke at the upstream CA through the signer (the same path as ACME revokeCert)."""
    return await ops.revoke_certificate(certificate, body.reason if body else 0, actor=who)


@router.get("/upstream", tags=["status"])
async def upstream_status(ops: Ops) -> schemas.UpstreamStatus:
    """The signer's readiness (its /readyz, which asks the upstream) and the upstream tables."""
    return await ops.upstream_status()


@router.get("/queues", tags=["status"])
async def queue_status(ops: Ops) -> schemas.QueueStatus:
    """The JetStream job backlog per durable consumer (validator, signer)."""
    return await ops.queue_status()


@router.get("/policy", tags=["status"])
async def policy(ops: Ops) -> schemas.PolicyView:
    """The identifier policy (ACME_RA_POLICY_*) and the client networks (ACME_RA_POLICY_CLIENT_NETWORKS,
    `client_networks` in ACME_RA_CONFIG_FILE) as the configuration says now."""
    return await ops.policy()


@router.get("/audit", tags=["audit"])
async def audit_log(
    ops: Ops, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0,
    action: Annotated[str | None, Query(description="this action (certificate.revoke), or a prefix ending "
                                                    "with a dot (certificate.)", max_length=64)] = None,
    token_id: Annotated[str | None, Query(description="made with this admin token", max_length=32)] = None,
    actor: Annotated[str | None, Query(description="made by this actor (a token's label, cli:<user>)",
                                       max_length=200)] = None,
    subject: Annotated[str | None, Query(description="about this id (a certificate id, an EAB kid...)",
                                         max_length=200)] = None,
    since: Annotated[dt.datetime | None, Query(description="at or after this time (ISO 8601)")] = None,
    until: Annotated[dt.datetime | None, Query(description="before this time (ISO 8601)")] = None,
) -> list[schemas.AuditEntry]:
    """The audit log of admin changes, newest first: who (token id and label, or cli:<OS user>),
    when, from which address, what and to what."""
    def aware(value: dt.datetime | None) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value

    wanted = AuditFilter(action=action, token_id=token_id, actor=actor, subject=subject, since=aware(since),
                         until=aware(until))
    return await ops.list_audit(wanted, limit, offset)
