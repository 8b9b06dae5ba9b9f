"""Orders (RFC 8555 §7.4): newOrder, order polling, finalize, certificate download."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from fastapi.responses import Response
from sqlalchemy import and_, bindparam, insert, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from acme_ra import blocked_keys, bus, telemetry
from acme_ra.db.fast import Statement
from acme_ra.db.models import (
    Authorization,
    AuthzStatus,
    Certificate,
    Challenge,
    ChallengeStatus,
    EabKey,
    Order,
    OrderAuthorization,
    OrderStatus,
    RateCounter,
    new_id,
    utcnow,
)
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
from acme_ra_frontend import caa_recheck, queries, ratelimits
from acme_ra_frontend import client_networks
from acme_ra_frontend.plumbing import AcmeCall, json_response
from acme_ra_frontend.queries import OrderRow
from acme_ra_frontend.render import order_json
from acme_ra_frontend.renewal_info import parse_cert_id

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
    """Wildcards: DNS only (§7.1.3); IP addresses: never dns-01 (RFC 8738 §7)."""
    if identifier.wildcard:
        wanted = ["dns-01"]
    elif identifier.type == "ip":
        wanted = ["http-01", "tls-alpn-01"]
    else:
        wanted = ["http-01", "dns-01", "tls-alpn-01"]
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
    cert = (
        await call.session.execute(select(Certificate).where(Certificate.ari_cert_id == cert_id))
    ).scalars().first()
    if cert is None:
        raise Problem("malformed", "replaces names a certificate this server did not issue", 404)
    if cert.account_id != call.require_account().id:
        raise unauthorized("replaces names another account's certificate")
    old = (await call.session.execute(select(Order.identifiers).where(Order.id == cert.order_id))).scalar_one()
    if not {i["value"] for i in old} & {i.value for i in identifiers}:
        raise malformed("the replacement order shares no identifier with the certificate it replaces")
    taken = (
        await call.session.execute(
            select(Order.id).where(Order.replaces == cert_id, Order.status != OrderStatus.invalid.value).limit(1)
        )
    ).first()
    if taken is not None:
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
        eab_key = (await _EAB_KEY.run(conn, {"kid": account.eab_kid})).first()
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
    new_authzs: list[dict[str, Any]] = []
    new_challenges: list[dict[str, Any]] = []
    for identifier in identifiers:
        reusable = reusable_authzs.get((identifier.type, identifier.base_value, identifier.wildcard))
        if reusable is None:
            types = challenge_types_for(identifier, settings.challenge_type_list)
            if not types:
                raise Problem("rejectedIdentifier", f"no challenge type offered here can validate {identifier.value}",
                              subproblems=[{"type": "rejectedIdentifier", "detail": "no usable challenge type",
                                            "identifier": identifier.to_json()}])
            reusable = new_id()
            new_authzs.append({"id": reusable, "account_id": account.id, "identifier_type": identifier.type,
                               "identifier_value": identifier.base_value, "wildcard": identifier.wildcard,
                               "status": AuthzStatus.pending.value, "expires": expires, "created_at": now})
            new_challenges += [{"id": new_id(), "authz_id": reusable, "type": challenge_type, "token": new_id(),
                                "status": ChallengeStatus.pending.value, "updated_at": now} for challenge_type in types]
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
        status=OrderStatus.pending.value if new_authzs else OrderStatus.ready.value,
        expires=expires, identifiers=[i.to_json() for i in identifiers], not_before=None, not_after=None,
        error=None, certificate_id=None, profile=profile, replaces=replaces,
    )
    await insert_order(conn, order, now, telemetry.current_traceparent(), authz_ids, new_authzs, new_challenges,
                       limits)
    return json_response(order_json(order, authz_ids, call.urls), 201, {"Location": call.urls.order(order.id)})


# newOrder's statements, built once.
_EAB_KEY = Statement(select(EabKey.kid, EabKey.policy, EabKey.profile).where(EabKey.kid == bindparam("kid")))
_INSERT_ORDER = Statement(insert(Order), ["id", "account_id", "provisioner", "status", "expires", "identifiers",
                                          "profile", "replaces", "trace_context", "created_at", "updated_at"])
_INSERT_AUTHZ = Statement(insert(Authorization), ["id", "account_id", "identifier_type", "identifier_value",
                                                  "wildcard", "status", "expires", "created_at"])
_INSERT_CHALLENGE = Statement(insert(Challenge), ["id", "authz_id", "type", "token", "status", "updated_at"])
_INSERT_ORDER_AUTHZ = Statement(insert(OrderAuthorization), ["order_id", "authz_id", "position"])
# PostgreSQL: the order, its new authorizations and challenges and its authorization list in one
# statement (data-modifying CTEs; the foreign keys are checked at its end): one round trip, not
# four. With rate limits, their counters come first in the same statement (ratelimits.SPENT_CTES)
# and every insert depends on ``allowed``: a refused order inserts nothing, and the statement
# answers the counts (the limits' own round trips saved).
_INSERT_ORDER_SQL = """
WITH {spent}new_order AS (
    INSERT INTO orders (id, account_id, provisioner, status, expires, identifiers, profile, replaces,
                        trace_context, created_at, updated_at)
    SELECT :id, :account_id, :provisioner, :status, :expires, CAST(:identifiers AS json), :profile, :replaces,
           :trace_context, :now, :now{allowed_from}
), new_authzs AS (
    INSERT INTO authorizations (id, account_id, identifier_type, identifier_value, wildcard, status, expires,
                                created_at)
    SELECT a.id, :account_id, a.kind, a.value, a.wildcard, :authz_status, :expires, :now
    FROM unnest(CAST(:authz_ids AS varchar[]), CAST(:authz_kinds AS varchar[]), CAST(:authz_values AS varchar[]),
                CAST(:authz_wildcards AS boolean[])) AS a(id, kind, value, wildcard){allowed_join}
), new_challenges AS (
    INSERT INTO challenges (id, authz_id, type, token, status, updated_at)
    SELECT c.id, c.authz_id, c.type, c.token, :challenge_status, :now
    FROM unnest(CAST(:challenge_ids AS varchar[]), CAST(:challenge_authz_ids AS varchar[]),
                CAST(:challenge_types AS varchar[]),
                CAST(:challenge_tokens AS varchar[])) AS c(id, authz_id, type, token){allowed_join}
), new_links AS (
    INSERT INTO order_authorizations (order_id, authz_id, position)
    SELECT :id, o.authz_id, o.position - 1
    FROM unnest(CAST(:order_authz_ids AS varchar[])) WITH ORDINALITY AS o(authz_id, position){allowed_join}
)
SELECT {result}
"""
_ORDER_BINDS = (  # the columns' own types, for their bind processing (naive UTC, JSON text)
    bindparam("expires", type_=Order.expires.type), bindparam("now", type_=Order.created_at.type),
    bindparam("identifiers", type_=Order.identifiers.type),
)
_INSERT_ORDER_AND_AUTHZS = Statement(text(_INSERT_ORDER_SQL.format(
    spent="", allowed_from="", allowed_join="", result="0")).bindparams(*_ORDER_BINDS))
_SPEND_AND_INSERT_ORDER = Statement(text(_INSERT_ORDER_SQL.format(
    spent=ratelimits.SPENT_CTES + ", ", allowed_from=" FROM allowed", allowed_join=", allowed",
    result="key, count FROM spent",
)).bindparams(*_ORDER_BINDS, *ratelimits.SPENT_BINDS).columns(RateCounter.key, RateCounter.count))


async def insert_order(conn: AsyncConnection, order: OrderRow, now: dt.datetime, trace_context: str | None,
                       authz_ids: list[str], new_authzs: list[dict[str, Any]],
                       new_challenges: list[dict[str, Any]], limits: Sequence[ratelimits.Spend] = ()) -> None:
    """The new order's rows, after the counters of ``limits`` (of one window): one statement on
    PostgreSQL. Raises the first exceeded limit's ``rateLimited`` (nothing inserted)."""
    limits = ratelimits.active(limits)
    if conn.dialect.name == "postgresql":
        values = {
            "id": order.id, "account_id": order.account_id, "provisioner": order.provisioner,
            "status": order.status, "expires": order.expires,
            "identifiers": order.identifiers, "profile": order.profile,
            "replaces": order.replaces, "trace_context": trace_context, "now": now,
            "authz_status": AuthzStatus.pending.value, "challenge_status": ChallengeStatus.pending.value,
            "authz_ids": [a["id"] for a in new_authzs], "authz_kinds": [a["identifier_type"] for a in new_authzs],
            "authz_values": [a["identifier_value"] for a in new_authzs],
            "authz_wildcards": [a["wildcard"] for a in new_authzs],
            "challenge_ids": [c["id"] for c in new_challenges],
            "challenge_authz_ids": [c["authz_id"] for c in new_challenges],
            "challenge_types": [c["type"] for c in new_challenges],
            "challenge_tokens": [c["token"] for c in new_challenges],
            "order_authz_ids": authz_ids,
        }
        if not limits:
            await _INSERT_ORDER_AND_AUTHZS.run(conn, values)
            return
        spent = await _SPEND_AND_INSERT_ORDER.run(conn, {**values, **ratelimits.spent_params(limits, now)})
        ratelimits.check_spent(limits, spent.all(), now)
        return
    for limit in limits:
        await ratelimits.spend(conn, limit)
    await _INSERT_ORDER.run(conn, {
        "id": order.id, "account_id": order.account_id, "provisioner": order.provisioner, "status": order.status,
        "expires": order.expires, "identifiers": order.identifiers, "profile": order.profile,
        "replaces": order.replaces, "trace_context": trace_context, "created_at": now, "updated_at": now,
    })
    if new_authzs:
        await _INSERT_AUTHZ.run(conn, new_authzs)
        await _INSERT_CHALLENGE.run(conn, new_challenges)
    await _INSERT_ORDER_AUTHZ.run(conn, [
        {"order_id": order.id, "authz_id": authz_id, "position": position}
        for position, authz_id in enumerate(authz_ids)
    ])


# The account's authorizations for the order's names that matter to a new order, in one statement:
# the invalid ones of the last hour (the failed-validations rate limit counts them per name) and
# the valid ones that stay valid long enough to be reused.
_AUTHZ_HISTORY = Statement(
    select(Authorization.id, Authorization.identifier_type, Authorization.identifier_value,
           Authorization.wildcard, Authorization.status, Authorization.expires)
    .where(
        Authorization.account_id == bindparam("account_id"),
        Authorization.identifier_value.in_(bindparam("values", expanding=True)),
        or_(
            and_(Authorization.status == AuthzStatus.invalid.value, Authorization.created_at > bindparam("since")),
            and_(Authorization.status == AuthzStatus.valid.value, Authorization.expires > bindparam("after")),
        ),
    )
)


async def authz_history(
    conn: AsyncConnection, account_id: str, identifiers: list[Identifier], now: dt.datetime, reuse: bool
) -> tuple[dict[str, int], dict[tuple[str, str, bool], str]]:
    """Failed validations of the last hour per name, and the reusable valid authorization (the one
    that lasts longest) per (type, name, wildcard) when reuse is on."""
    rows = (await _AUTHZ_HISTORY.run(conn, {
        "account_id": account_id, "values": sorted({i.base_value for i in identifiers}),
        "since": now - ratelimits.HOUR, "after": now + AUTHZ_REUSE_MARGIN,
    })).all()
    failures: dict[str, int] = {}
    reusable: dict[tuple[str, str, bool], tuple[dt.datetime, str]] = {}
    for authz_id, kind, value, wildcard, status, expires in rows:
        if status == AuthzStatus.invalid.value:
            failures[value] = failures.get(value, 0) + 1
        elif reuse:
            key = (kind, value, bool(wildcard))
            if key not in reusable or expires > reusable[key][0]:
                reusable[key] = (expires, authz_id)
    return failures, {key: authz_id for key, (_, authz_id) in reusable.items()}


async def load_order(call: AcmeCall) -> tuple[OrderRow, list[str]]:
    """The caller's order (404 for anyone else's) and its authorization ids, with expiry applied."""
    found = queries.order_from_rows(await call.read(queries.ORDER_READ, call.request.path_params["order_id"]))
    if found is None or found[0].provisioner != call.urls.provisioner:
        raise not_found("order")
    order, authz_ids = found
    if order.account_id != call.require_account().id:
        raise unauthorized("this order belongs to another account")
    if order.status in (OrderStatus.pending.value, OrderStatus.ready.value) and order.expires <= utcnow():
        order.status = OrderStatus.invalid.value
        order.error = {"type": "malformed", "detail": "the order expired"}
        await queries.expire_order(call.conn, order.id, order.error, utcnow())
    return order, authz_ids


def order_response(call: AcmeCall, order: OrderRow, authz_ids: list[str]) -> Response:
    headers = {"Location": call.urls.order(order.id)}
    if order.status == OrderStatus.processing.value:
        headers["Retry-After"] = str(call.state.settings.retry_after_seconds)
    return json_response(order_json(order, authz_ids, call.urls), 200, headers)


async def order(call: AcmeCall) -> Response:
    if not call.is_post_as_get:
        raise malformed("orders are read with POST-as-GET (an empty payload)")
    found, authz_ids = await load_order(call)
    return order_response(call, found, authz_ids)


async def finalize(call: AcmeCall) -> Response:
    found, authz_ids = await load_order(call)
    if found.status != OrderStatus.ready.value:
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
    if not await queries.claim_finalize(call.conn, found.id, csr_der, blocked_keys.spki_sha256(csr.public_key()),
                                        utcnow(), limits):
        if await blocked_keys.is_blocked(call.conn, csr.public_key()):
            raise Problem("badCSR", "the CSR's key is blocked: a certificate for it was revoked for keyCompromise")
        raise Problem("orderNotReady", "the order is already being finalized")
    found.status = OrderStatus.processing.value
    call.publish_after_commit(bus.SUBJECT_ISSUE, bus.IssueJob(order_id=found.id), f"issue-{found.id}")

    async def reread(conn: AsyncConnection) -> OrderRow | None:
        again = await queries.order_with_authz_ids(conn, found.id)
        return again[0] if again else None

    call.respond_when_done(found.id, found, reread, lambda row: order_response(call, row, authz_ids))
    return order_response(call, found, authz_ids)


async def certificate(call: AcmeCall) -> Response:
    if not call.is_post_as_get:
        raise malformed("certificates are downloaded with POST-as-GET (an empty payload)")
    cert = queries.certificate_from_rows(
        await call.read(queries.CERTIFICATE_READ, call.request.path_params["certificate_id"]))
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
