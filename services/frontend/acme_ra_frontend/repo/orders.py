"""Orders: the reads and state changes of newOrder, order polling and finalize (RFC 8555 §7.4).

newOrder and finalize run without a transaction: each writes in one statement that holds by
itself, with its rate counters in that statement on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Integer,
    String,
    and_,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from acme_ra.db.fast import Statement
from acme_ra.db.models import (
    Authorization,
    AuthzStatus,
    BlockedKey,
    Certificate,
    Challenge,
    ChallengeStatus,
    EabKey,
    Order,
    OrderAuthorization,
    OrderStatus,
    RateCounter,
)
from acme_ra_frontend import ratelimits
from acme_ra_frontend.repo.reads import Read


@dataclass(slots=True)
class OrderRow:
    id: str
    account_id: str
    provisioner: str
    status: str
    expires: dt.datetime
    identifiers: list[Any]
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    error: dict[str, Any] | None
    certificate_id: str | None
    profile: str | None
    replaces: str | None


@dataclass(slots=True)
class NewAuthz:
    """An authorization a new order creates, with its challenges (their types and tokens)."""

    id: str
    identifier_type: str
    identifier_value: str
    wildcard: bool
    challenges: list[tuple[str, str, str]]  # (id, type, token)


_ORDER_COLUMNS = (Order.id, Order.account_id, Order.provisioner, Order.status, Order.expires, Order.identifiers,
                  Order.not_before, Order.not_after, Order.error, Order.certificate_id, Order.profile, Order.replaces)

# An order with its authorization ids, in one statement.
ORDER_READ = Read(Statement(
    select(*_ORDER_COLUMNS, OrderAuthorization.authz_id, OrderAuthorization.position)
    .outerjoin(OrderAuthorization, OrderAuthorization.order_id == Order.id)
    .where(Order.id == bindparam("order_id"))
), "order_id")
_EXPIRE_ORDER = Statement(
    update(Order)
    .where(Order.id == bindparam("b_order_id"), Order.status.in_([OrderStatus.pending, OrderStatus.ready]))
    .values(status=OrderStatus.invalid, error=bindparam("b_error"), updated_at=bindparam("b_now"))
)
# ready → processing with the CSR, unless the CSR's key is blocked (blocked_keys).
_CLAIM_FINALIZE = (
    update(Order)
    .where(Order.id == bindparam("b_order_id"), Order.status == OrderStatus.ready,
           ~exists().where(BlockedKey.spki_sha256 == bindparam("b_spki_sha256")))
    .values(status=OrderStatus.processing, csr=bindparam("b_csr"), updated_at=bindparam("b_now"))
)
_EAB_KEY = Statement(select(EabKey.kid, EabKey.policy, EabKey.profile).where(EabKey.kid == bindparam("kid")))


def order_from_rows(rows: Sequence[Any]) -> tuple[OrderRow, list[str]] | None:
    """An order and its authorization ids (in the order's order) from ``ORDER_READ``'s rows."""
    if not rows:
        return None
    linked = sorted((row for row in rows if row[12] is not None), key=lambda row: row[13])
    return OrderRow(*rows[0][:12]), [row[12] for row in linked]


async def order_with_authz_ids(conn: AsyncConnection, order_id: str) -> tuple[OrderRow, list[str]] | None:
    return order_from_rows(await ORDER_READ.rows(conn, order_id))


async def expire_order(conn: AsyncConnection, order_id: str, error: dict[str, Any], now: dt.datetime) -> None:
    await _EXPIRE_ORDER.run(conn, {"b_order_id": order_id, "b_error": error, "b_now": now})


async def eab_key(conn: AsyncConnection, kid: str) -> Any:
    """The account's EAB key (kid, policy, profile), or None."""
    return (await _EAB_KEY.run(conn, {"kid": kid})).first()


_CLAIM_FINALIZE_ALONE = Statement(_CLAIM_FINALIZE)
_INSERT_ORDER = Statement(insert(Order), ["id", "account_id", "provisioner", "status", "expires", "identifiers",
                                          "profile", "replaces", "trace_context", "created_at", "updated_at"])
_INSERT_AUTHZ = Statement(insert(Authorization), ["id", "account_id", "identifier_type", "identifier_value",
                                                  "wildcard", "status", "expires", "created_at"])
_INSERT_CHALLENGE = Statement(insert(Challenge), ["id", "authz_id", "type", "token", "status", "updated_at"])
_INSERT_ORDER_AUTHZ = Statement(insert(OrderAuthorization), ["order_id", "authz_id", "position"])

def _array(name: str, item: Any) -> Any:
    return cast(bindparam(name), ARRAY(item))


def _spent_ctes() -> tuple[Any, Any]:
    """PostgreSQL: the counters of some limits (of one window) spent inside newOrder's insert or
    finalize's claim: ``spent`` gives each key with its count after this event and ``allowed`` one
    row when every count is within its limit, for the statement's writes to depend on (a refused
    request writes nothing but its counters). Its parameters: ``_spent_params``; its ``spent``
    rows: ``ratelimits.check_spent``."""
    limits = select(func.unnest(_array("rate_keys", String)).label("key"),
                    func.unnest(_array("rate_limits", Integer)).label("lim")).cte("limits")
    spent = (
        pg_insert(RateCounter)
        .from_select(["key", "window_start", "count"],
                     select(limits.c.key, bindparam("rate_window_start", type_=RateCounter.window_start.type),
                            literal_column("1")))
        .on_conflict_do_update(index_elements=["key", "window_start"], set_={"count": RateCounter.count + 1})
        .returning(RateCounter.key, RateCounter.count)
        .cte("spent")
    )
    over: Any = (select(literal_column("1")).select_from(spent.join(limits, spent.c.key == limits.c.key))
                 .where(spent.c.count > limits.c.lim))
    allowed = select(literal_column("1").label("ok")).where(~over.exists()).cte("allowed")
    return spent, allowed


def _spent_params(limits: Sequence[ratelimits.Spend], now: dt.datetime) -> dict[str, Any]:
    first = limits[0]
    if any(limit.window != first.window for limit in limits):
        raise ValueError("the limits spent in one statement share one window")
    return {"rate_keys": [limit.key for limit in limits], "rate_limits": [limit.limit for limit in limits],
            "rate_window_start": first.window_start(now)}


def _spend_and_claim_finalize() -> Statement:
    """PostgreSQL, finalize with rate limits: their counters and the claim in one statement, the
    claim conditional on every count being within its limit."""
    spent, allowed = _spent_ctes()
    claimed = _CLAIM_FINALIZE.where(select(allowed.c.ok).exists()).returning(Order.id).cte("claimed")
    return Statement(select(spent.c.key, spent.c.count,
                            select(func.count()).select_from(claimed).scalar_subquery().label("claimed")))


_SPEND_AND_CLAIM_FINALIZE = _spend_and_claim_finalize()


async def claim_finalize(conn: AsyncConnection, order_id: str, csr: bytes, spki_sha256: str, now: dt.datetime,
                         limits: Sequence[ratelimits.Spend] = ()) -> bool:
    """ready → processing with the CSR; False if another request finalized it first or the CSR's
    key (``spki_sha256``) is blocked. The counters of ``limits`` (of one window) are spent first,
    in the claim's own statement on PostgreSQL; when one is exceeded nothing is claimed and its
    ``rateLimited`` is raised."""
    limits = ratelimits.active(limits)
    params = {"b_order_id": order_id, "b_csr": csr, "b_spki_sha256": spki_sha256, "b_now": now}
    if limits and conn.dialect.name == "postgresql":
        rows = (await _SPEND_AND_CLAIM_FINALIZE.run(conn, {**_spent_params(limits, now), **params})).all()
        ratelimits.check_spent(limits, rows, now)
        return bool(rows[0].claimed)
    for limit in limits:
        await ratelimits.spend(conn, limit)
    return bool((await _CLAIM_FINALIZE_ALONE.run(conn, params)).rowcount)


def _insert_order_and_authzs(limited: bool) -> Statement:
    """PostgreSQL: the order, its new authorizations and challenges and its authorization list in
    one statement (data-modifying CTEs; the foreign keys are checked at its end): one round trip,
    not four. ``limited``: the rate counters come first in the same statement (``_spent_ctes``) and
    every insert depends on ``allowed``: a refused order inserts nothing, and the statement answers
    the counts (the limits' own round trips saved)."""
    spent, allowed = _spent_ctes() if limited else (None, None)

    def gated(query: Any) -> Any:
        return query if allowed is None else query.where(select(allowed.c.ok).exists())

    order_id, account_id = bindparam("b_id", type_=String), bindparam("b_account_id", type_=String)
    now, expires = bindparam("b_now", type_=Order.created_at.type), bindparam("b_expires", type_=Order.expires.type)
    new_order = pg_insert(Order).from_select(
        ["id", "account_id", "provisioner", "status", "expires", "identifiers", "profile", "replaces",
         "trace_context", "created_at", "updated_at"],
        gated(select(order_id, account_id, bindparam("b_provisioner", type_=String),
                     bindparam("b_status", type_=String), expires,
                     bindparam("b_identifiers", type_=Order.identifiers.type), bindparam("b_profile", type_=String),
                     bindparam("b_replaces", type_=String), bindparam("b_trace_context", type_=String), now, now)),
        include_defaults=False).cte("new_order")
    a = (func.unnest(_array("authz_ids", String), _array("authz_kinds", String), _array("authz_values", String),
                     _array("authz_wildcards", Boolean))
         .table_valued("id", "kind", "value", "wildcard").render_derived(name="a"))
    new_authzs = pg_insert(Authorization).from_select(
        ["id", "account_id", "identifier_type", "identifier_value", "wildcard", "status", "expires", "created_at"],
        gated(select(a.c.id, account_id, a.c.kind, a.c.value, a.c.wildcard,
                     bindparam("authz_status", type_=String), expires, now).select_from(a)),
        include_defaults=False).cte("new_authzs")
    c = (func.unnest(_array("challenge_ids", String), _array("challenge_authz_ids", String),
                     _array("challenge_types", String), _array("challenge_tokens", String))
         .table_valued("id", "authz_id", "type", "token").render_derived(name="c"))
    new_challenges = pg_insert(Challenge).from_select(
        ["id", "authz_id", "type", "token", "status", "updated_at"],
        gated(select(c.c.id, c.c.authz_id, c.c.type, c.c.token, bindparam("challenge_status", type_=String), now)
              .select_from(c)),
        include_defaults=False).cte("new_challenges")
    o = (func.unnest(_array("order_authz_ids", String))
         .table_valued("authz_id", with_ordinality="position").render_derived(name="o"))
    new_links = pg_insert(OrderAuthorization).from_select(
        ["order_id", "authz_id", "position"],
        gated(select(order_id, o.c.authz_id, o.c.position - 1).select_from(o)),
        include_defaults=False).cte("new_links")
    result = select(literal_column("0")) if spent is None else select(spent.c.key, spent.c.count)
    return Statement(result.add_cte(new_order, new_authzs, new_challenges, new_links))


_INSERT_ORDER_AND_AUTHZS = _insert_order_and_authzs(limited=False)
_SPEND_AND_INSERT_ORDER = _insert_order_and_authzs(limited=True)


async def insert_order(conn: AsyncConnection, order: OrderRow, now: dt.datetime, trace_context: str | None,
                       authz_ids: list[str], new_authzs: list[NewAuthz],
                       limits: Sequence[ratelimits.Spend] = ()) -> None:
    """The new order's rows (the order, its new authorizations and their challenges, its list of
    authorizations), after the counters of ``limits`` (of one window): one statement on
    PostgreSQL. Raises the first exceeded limit's ``rateLimited`` (nothing inserted)."""
    limits = ratelimits.active(limits)
    if conn.dialect.name == "postgresql":
        challenges = [(a.id, *challenge) for a in new_authzs for challenge in a.challenges]
        values = {
            "b_id": order.id, "b_account_id": order.account_id, "b_provisioner": order.provisioner,
            "b_status": order.status, "b_expires": order.expires, "b_identifiers": order.identifiers,
            "b_profile": order.profile, "b_replaces": order.replaces, "b_trace_context": trace_context, "b_now": now,
            "authz_status": AuthzStatus.pending, "challenge_status": ChallengeStatus.pending,
            "authz_ids": [a.id for a in new_authzs], "authz_kinds": [a.identifier_type for a in new_authzs],
            "authz_values": [a.identifier_value for a in new_authzs],
            "authz_wildcards": [a.wildcard for a in new_authzs],
            "challenge_authz_ids": [c[0] for c in challenges], "challenge_ids": [c[1] for c in challenges],
            "challenge_types": [c[2] for c in challenges], "challenge_tokens": [c[3] for c in challenges],
            "order_authz_ids": authz_ids,
        }
        if not limits:
            await _INSERT_ORDER_AND_AUTHZS.run(conn, values)
            return
        spent = await _SPEND_AND_INSERT_ORDER.run(conn, {**values, **_spent_params(limits, now)})
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
        await _INSERT_AUTHZ.run(conn, [
            {"id": a.id, "account_id": order.account_id, "identifier_type": a.identifier_type,
             "identifier_value": a.identifier_value, "wildcard": a.wildcard, "status": AuthzStatus.pending,
             "expires": order.expires, "created_at": now} for a in new_authzs])
        await _INSERT_CHALLENGE.run(conn, [
            {"id": challenge_id, "authz_id": a.id, "type": kind, "token": token,
             "status": ChallengeStatus.pending, "updated_at": now}
            for a in new_authzs for challenge_id, kind, token in a.challenges])
    await _INSERT_ORDER_AUTHZ.run(conn, [
        {"order_id": order.id, "authz_id": authz_id, "position": position}
        for position, authz_id in enumerate(authz_ids)
    ])


# The account's authorizations for the order's names that matter to a new order, in one statement:
# the invalid ones created since ``since`` (the failed-validations rate limit counts them per name)
# and the valid ones that stay valid past ``after`` (reusable).
_AUTHZ_HISTORY = Statement(
    select(Authorization.id, Authorization.identifier_type, Authorization.identifier_value,
           Authorization.wildcard, Authorization.status, Authorization.expires)
    .where(
        Authorization.account_id == bindparam("account_id"),
        Authorization.identifier_value.in_(bindparam("values", expanding=True)),
        or_(
            and_(Authorization.status == AuthzStatus.invalid, Authorization.created_at > bindparam("since")),
            and_(Authorization.status == AuthzStatus.valid, Authorization.expires > bindparam("after")),
        ),
    )
)


async def authz_history(conn: AsyncConnection, account_id: str, values: Sequence[str], since: dt.datetime,
                        after: dt.datetime) -> Sequence[Any]:
    """Rows (id, identifier_type, identifier_value, wildcard, status, expires)."""
    result = await _AUTHZ_HISTORY.run(conn, {"account_id": account_id, "values": sorted(set(values)),
                                             "since": since, "after": after})
    return list(result.all())


async def identifiers_of(session: AsyncSession, order_id: str) -> list[Any]:
    return list((await session.execute(select(Order.identifiers).where(Order.id == order_id))).scalar_one())


async def is_replaced(session: AsyncSession, cert_id: str) -> bool:
    """Whether an order that is not invalid replaces the certificate (RFC 9773 §5)."""
    return (await session.execute(
        select(Order.id).where(Order.replaces == cert_id, Order.status != OrderStatus.invalid).limit(1)
    )).first() is not None


async def trace_context(conn: AsyncConnection, params: dict[str, Any]) -> str | None:
    """The trace context of the order a request is about, by its path parameters (tracing only:
    one indexed lookup)."""
    if "order_id" in params:
        query = select(Order.trace_context).where(Order.id == params["order_id"])
    elif "authz_id" in params:
        query = (
            select(Order.trace_context)
            .join(OrderAuthorization, OrderAuthorization.order_id == Order.id)
            .where(OrderAuthorization.authz_id == params["authz_id"])
            .order_by(Order.created_at.desc())
            .limit(1)
        )
    elif "certificate_id" in params:
        query = (
            select(Order.trace_context)
            .join(Certificate, Certificate.order_id == Order.id)
            .where(Certificate.id == params["certificate_id"])
        )
    else:
        return None
    return (await conn.execute(query)).scalars().first()


async def count_open_by_status(session: AsyncSession, statuses: Sequence[str]) -> Sequence[Any]:
    """(status, count) of the open ``statuses`` that have orders (metrics): along
    ix_orders_status_updated, never the whole (ever larger) table."""
    return (await session.execute(select(Order.status, func.count()).where(Order.status.in_(statuses))
                                  .group_by(Order.status))).all()
