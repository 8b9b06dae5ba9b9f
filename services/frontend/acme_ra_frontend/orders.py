"""Orders (RFC 8555 §7.4): newOrder, order polling, finalize, certificate download."""

from __future__ import annotations

import datetime as dt

from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncConnection

from acme_ra import blocked_keys, bus, telemetry
from acme_ra.db.models import AuthzStatus, OrderStatus, new_id, utcnow
from acme_ra.protocol.csr import check_csr_identifiers, parse_csr
from acme_ra.protocol.identifiers import (
    MAX_IDENTIFIERS_PER_ORDER,
    Identifier,
    IdentifierError,
    parse_identifier,
    registered_domain,
)
from acme_ra.protocol.jws import b64url_decode, raw_key
from acme_ra.protocol.policy import Policy
from acme_ra.protocol.problems import Problem, malformed, not_found, unauthorized
from acme_ra_frontend import caa_recheck, client_networks, ratelimits
from acme_ra_frontend.context import AcmeCall
from acme_ra_frontend.render import json_response, order_json
from acme_ra_frontend.renewal_info import parse_cert_id
from acme_ra_frontend.repo import certificates as repo_certificates
from acme_ra_frontend.repo import orders as repo
from acme_ra_frontend.repo.orders import NewAuthz, OrderRow

# A reused valid authorization must stay valid at least this long after the order is created.
AUTHZ_REUSE_MARGIN = dt.timedelta(days=1)
PEM_CHAIN = "application/pem-certificate-chain"


def parse_identifiers(raw: object, limit: int = MAX_IDENTIFIERS_PER_ORDER) -> list[Identifier]:
    if not isinstance(raw, list) or not raw:
        raise malformed("newOrder needs a non-empty identifiers array")
    # ACME_RA_LIMIT_IDENTIFIERS_PER_ORDER, checked before any is parsed. malformed, as Boulder
    # answers: RFC 8555 has no type for it, and rejectedIdentifier would say a name is refused.
    if len(raw) > limit:
        raise malformed(f"an order may hold at most {limit} identifiers, not {len(raw)}")
    identifiers: list[Identifier] = []
    errors: list[IdentifierError] = []
    for item in raw:
        try:
            identifier = parse_identifier(item)
        except IdentifierError as error:
            errors.append(error)
            continue
        if identifier not in identifiers:
            identifiers.append(identifier)
    if len(errors) == 1:
        raise Problem(errors[0].type, errors[0].detail, subproblems=[errors[0].to_data()])
    if errors:
        types = {e.type for e in errors}
        top = types.pop() if len(types) == 1 else "compound"
        raise Problem(top, f"{len(errors)} identifiers were refused", subproblems=[e.to_data() for e in errors])
    return identifiers


def challenge_types_for(identifier: Identifier, offered: list[str]) -> list[str]:
    """Wildcards: DNS only (§7.1.3); IP addresses: never the DNS types (RFC 8738 §7)."""
    if identifier.wildcard:
        wanted = ["dns-01", "dns-account-01", "dns-persist-01"]
    elif identifier.type == "ip":
        wanted = ["http-01", "tls-alpn-01"]
    else:
        wanted = ["http-01", "dns-01", "tls-alpn-01", "dns-account-01", "dns-persist-01"]
    return [t for t in wanted if t in offered]


def check_policy(identifiers: list[Identifier], policies: list[Policy]) -> None:
    """Refuse identifiers the policies do not allow: one subproblem per refused identifier."""
    refused = []
    for identifier in identifiers:
        for policy in policies:
            reason = policy.refusal(identifier)
            if reason:
                refused.append({"type": "rejectedIdentifier", "detail": f"{identifier.value}: {reason}",
                                "identifier": identifier.to_json()})
                break
    if refused:
        detail = str(refused[0]["detail"]) if len(refused) == 1 else f"{len(refused)} identifiers were refused by policy"
        raise Problem("rejectedIdentifier", detail, subproblems=refused)


def choose_profile(call: AcmeCall, requested: object, eab_profile: str | None) -> str:
    """The profile asked for, else the EAB key's default, else the server's."""
    offered = call.state.settings.profile_descriptions
    if requested is None:
        if eab_profile is not None and eab_profile in offered:
            return eab_profile
        return call.state.settings.default_profile
    if not isinstance(requested, str) or requested not in offered:
        raise Problem("invalidProfile", f"profile {requested!r} is not offered; offered: {', '.join(offered)}")
    return requested


async def check_replaces(call: AcmeCall, cert_id: object, identifiers: list[Identifier]) -> str:
    """RFC 9773 §5: the replaced certificate is the account's, shares a name, not yet replaced."""
    if not isinstance(cert_id, str):
        raise malformed("replaces must be an ARI certID string")
    parse_cert_id(cert_id)
    cert = await repo_certificates.by_ari_id(call.session, cert_id)
    if cert is None:
        raise Problem("malformed", "replaces names a certificate this server did not issue", 404)
    if cert.account_id != call.require_account().id:
        raise unauthorized("replaces names another account's certificate")
    old = await repo.identifiers_of(call.session, cert.order_id)
    if not {i["value"] for i in old} & {i.value for i in identifiers}:
        raise malformed("the replacement order shares no identifier with the certificate it replaces")
    if await repo.is_replaced(call.session, cert_id):
        raise Problem("alreadyReplaced", "this certificate has already been replaced by another order")
    return cert_id


async def new_order(call: AcmeCall) -> Response:
    account = call.require_account()
    payload = call.payload()
    settings = call.state.settings
    identifiers = parse_identifiers(payload.get("identifiers"), settings.limit_identifiers_per_order)
    if payload.get("notBefore") is not None or payload.get("notAfter") is not None:
        raise malformed("notBefore and notAfter are not supported; the profile sets the validity")
    conn = call.conn
    eab_key = None
    if account.eab_kid:
        eab_key = await repo.eab_key(conn, account.eab_kid)
    policies = [call.state.policy] + ([Policy.from_data(eab_key.policy)] if eab_key and eab_key.policy else [])
    check_policy(identifiers, policies)
    client_networks.check_identifiers(call.request, identifiers)
    profile = choose_profile(call, payload.get("profile"), eab_key.profile if eab_key else None)
    now = utcnow()
    failure_limit = settings.rate_failed_validations_per_name_per_hour
    failures: dict[str, int] = {}
    reusable_authzs: dict[tuple[str, str, bool], str] = {}
    if settings.reuse_valid_authorizations or failure_limit > 0:
        failures, reusable_authzs = await authz_history(conn, account.id, identifiers, now,
                                                        settings.reuse_valid_authorizations)
    ratelimits.check_failed_validations(failures, failure_limit)
    replaces = None
    if payload.get("replaces") is not None:
        replaces = await check_replaces(call, payload["replaces"], identifiers)
    order_id = new_id()
    telemetry.current_span().set_attribute("acme.order_id", order_id)
    expires = now + dt.timedelta(seconds=settings.order_lifetime_seconds)
    authz_ids: list[str] = []
    new_authzs: list[NewAuthz] = []
    for identifier in identifiers:
        reusable = reusable_authzs.get((identifier.type, identifier.base_value, identifier.wildcard))
        if reusable is None:
            types = challenge_types_for(identifier, settings.challenge_type_list)
            if not types:
                raise Problem("rejectedIdentifier", f"no challenge type offered here can validate {identifier.value}",
                              subproblems=[{"type": "rejectedIdentifier", "detail": "no usable challenge type",
                                            "identifier": identifier.to_json()}])
            reusable = new_id()
            new_authzs.append(NewAuthz(reusable, identifier.type, identifier.base_value, identifier.wildcard,
                                       [(new_id(), challenge_type, new_id()) for challenge_type in types]))
        authz_ids.append(reusable)
    await ratelimits.check_pending_authorizations(conn, account.id, len(new_authzs),
                                                  settings.limit_pending_authz_per_account, now)
    # The rate counters last: newOrder runs without a transaction (Atomicity.NONE), so nothing after
    # a counter may refuse the request. They are spent by the statement that inserts the order.
    limits = [ratelimits.Spend("orders-per-account", account.id, settings.rate_new_orders_per_account_per_hour,
                               ratelimits.HOUR, "new orders for this account")]
    if eab_key is not None:
        limits.append(ratelimits.Spend("orders-per-eab-key", eab_key.kid, settings.rate_new_orders_per_eab_key_per_hour,
                                       ratelimits.HOUR, "new orders for this External Account Binding key"))
    order = OrderRow(
        id=order_id, account_id=account.id, provisioner=call.urls.provisioner,
        # every authorization reused, and each is valid: ready at once
        status=OrderStatus.pending if new_authzs else OrderStatus.ready,
        expires=expires, identifiers=[i.to_json() for i in identifiers], not_before=None, not_after=None,
        error=None, certificate_id=None, profile=profile, replaces=replaces,
    )
    await repo.insert_order(conn, order, now, telemetry.current_traceparent(), authz_ids, new_authzs, limits)
    return json_response(order_json(order, authz_ids, call.urls), 201, {"Location": call.urls.order(order.id)})


async def authz_history(
    conn: AsyncConnection, account_id: str, identifiers: list[Identifier], now: dt.datetime, reuse: bool
) -> tuple[dict[str, int], dict[tuple[str, str, bool], str]]:
    """Failed validations of the last hour per name, and the reusable valid authorization (the one
    that lasts longest) per (type, name, wildcard) when reuse is on."""
    rows = await repo.authz_history(conn, account_id, [i.base_value for i in identifiers],
                                    since=now - ratelimits.HOUR, after=now + AUTHZ_REUSE_MARGIN)
    failures: dict[str, int] = {}
    reusable: dict[tuple[str, str, bool], tuple[dt.datetime, str]] = {}
    for authz_id, kind, value, wildcard, status, expires in rows:
        if status == AuthzStatus.invalid:
            failures[value] = failures.get(value, 0) + 1
        elif reuse:
            key = (kind, value, bool(wildcard))
            if key not in reusable or expires > reusable[key][0]:
                reusable[key] = (expires, authz_id)
    return failures, {key: authz_id for key, (_, authz_id) in reusable.items()}


async def load_order(call: AcmeCall) -> tuple[OrderRow, list[str]]:
    """The caller's order (404 for anyone else's) and its authorization ids, with expiry applied."""
    found = repo.order_from_rows(await call.read(repo.ORDER_READ, call.request.path_params["order_id"]))
    if found is None or found[0].provisioner != call.urls.provisioner:
        raise not_found("order")
    order, authz_ids = found
    if order.account_id != call.require_account().id:
        raise unauthorized("this order belongs to another account")
    if order.status in (OrderStatus.pending, OrderStatus.ready) and order.expires <= utcnow():
        order.status = OrderStatus.invalid
        order.error = {"type": "malformed", "detail": "the order expired"}
        await repo.expire_order(call.conn, order.id, order.error, utcnow())
    return order, authz_ids


def order_response(call: AcmeCall, order: OrderRow, authz_ids: list[str]) -> Response:
    headers = {"Location": call.urls.order(order.id)}
    if order.status == OrderStatus.processing:
        headers["Retry-After"] = str(call.state.settings.retry_after_seconds)
    return json_response(order_json(order, authz_ids, call.urls), 200, headers)


async def order(call: AcmeCall) -> Response:
    if not call.is_post_as_get:
        raise malformed("orders are read with POST-as-GET (an empty payload)")
    found, authz_ids = await load_order(call)
    return order_response(call, found, authz_ids)


async def finalize(call: AcmeCall) -> Response:
    found, authz_ids = await load_order(call)
    if found.status != OrderStatus.ready:
        raise Problem("orderNotReady", f"the order is {found.status}, not ready")
    if found.profile and found.profile not in call.state.settings.profile_descriptions:
        raise Problem("invalidProfile", f"profile {found.profile!r} is no longer offered")
    payload = call.payload()
    csr_der = b64url_decode(payload.get("csr"), "csr")
    csr = parse_csr(csr_der)  # its key policy included (csr.check_csr_key)
    if csr.public_key() == raw_key(call.jwk):
        raise Problem("badCSR", "the certificate key must not be the account key")
    identifiers = [Identifier(i["type"], i["value"]) for i in found.identifiers]
    check_csr_identifiers(csr, identifiers)
    await caa_recheck.recheck_stale_caa(call, authz_ids)
    # Without a transaction (Atomicity.NONE): the counters, then the claim, in one statement on
    # PostgreSQL (elsewhere each a statement that holds by itself). Only a blocked key or a lost
    # race with another finalize refuses the request after the counters were spent (it then
    # counts: see ratelimits).
    limits = [ratelimits.Spend("certificates-per-domain", domain,
                               call.state.settings.rate_certificates_per_domain_per_week, ratelimits.WEEK,
                               f"certificates for {domain} this week")
              for domain in sorted({registered_domain(i.value) for i in identifiers if i.type == "dns"})]
    # The claim is refused for a blocked key too (one statement for both, the usual case).
    if not await repo.claim_finalize(call.conn, found.id, csr_der, blocked_keys.spki_sha256(csr.public_key()),
                                        utcnow(), limits):
        if await blocked_keys.is_blocked(call.conn, csr.public_key()):
            raise Problem("badCSR", "the CSR's key is blocked: a certificate for it was revoked for keyCompromise")
        raise Problem("orderNotReady", "the order is already being finalized")
    found.status = OrderStatus.processing
    call.publish_after_commit(bus.SUBJECT_ISSUE, bus.IssueJob(order_id=found.id), f"issue-{found.id}")

    async def reread(conn: AsyncConnection) -> OrderRow | None:
        again = await repo.order_with_authz_ids(conn, found.id)
        return again[0] if again else None

    call.respond_when_done(found.id, found, reread, lambda row: order_response(call, row, authz_ids))
    return order_response(call, found, authz_ids)


async def certificate(call: AcmeCall) -> Response:
    if not call.is_post_as_get:
        raise malformed("certificates are downloaded with POST-as-GET (an empty payload)")
    cert = repo_certificates.certificate_from_rows(
        await call.read(repo_certificates.CERTIFICATE_READ, call.request.path_params["certificate_id"]))
    if cert is None:
        raise not_found("certificate")
    if cert.account_id != call.require_account().id:
        raise unauthorized("this certificate belongs to another account")
    alternates = cert.alternate_chains_pem or []
    index_text = call.request.path_params.get("alternate")
    chain = cert.chain_pem
    if index_text is not None:
        if not (index_text.isascii() and index_text.isdigit()) or not 1 <= int(index_text) <= len(alternates):
            raise not_found("alternate chain")
        chain = alternates[int(index_text) - 1]
    base = call.urls.certificate(cert.id)
    links = [f'<{base}/{n}>;rel="alternate"' for n in range(1, len(alternates) + 1) if str(n) != index_text]
    if index_text is not None:
        links.append(f'<{base}>;rel="alternate"')
    headers = {"Link": ", ".join(links)} if links else None
    return Response(chain.encode(), 200, headers=headers, media_type=PEM_CHAIN)
