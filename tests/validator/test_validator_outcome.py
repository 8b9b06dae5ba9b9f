"""``record_challenge_outcome`` in three statements (one on PostgreSQL) gives the same rows as
the step-by-step version it replaced (kept below as the reference): random orders sharing authorizations in every
status, expired or not, each outcome applied to two identical copies and compared. On PostgreSQL
``finish_challenge`` also says whether it left an order holding the authorization pending."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.engine import Database
from acme_ra.db.lifecycle import FinishedChallenge, finish_challenge, record_challenge_outcome
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import (
    Account,
    Authorization,
    AuthzStatus,
    Challenge,
    ChallengeStatus,
    Order,
    OrderAuthorization,
    OrderStatus,
    new_id,
    utcnow,
)
from tests.support import database

SCENARIOS = 60
LIFETIME = dt.timedelta(days=30)
FAILURE = {"type": "connection", "detail": "refused"}


async def reference_outcome(
    session: AsyncSession, challenge_id: str, error: dict[str, Any] | None, authz_lifetime: dt.timedelta
) -> bool:
    """The previous implementation: one statement at a time."""
    now = utcnow()
    valid = error is None
    changed = await session.execute(
        update(Challenge)
        .where(Challenge.id == challenge_id, Challenge.status == ChallengeStatus.processing.value)
        .values(
            status=ChallengeStatus.valid.value if valid else ChallengeStatus.invalid.value,
            validated=now if valid else None,
            error=error,
            updated_at=now,
        )
    )
    if changed.rowcount == 0:  # type: ignore[attr-defined]
        return False
    authz_id = (await session.execute(select(Challenge.authz_id).where(Challenge.id == challenge_id))).scalar_one()
    await session.execute(
        update(Authorization)
        .where(Authorization.id == authz_id, Authorization.status == AuthzStatus.pending.value)
        .values(
            status=AuthzStatus.valid.value if valid else AuthzStatus.invalid.value,
            **({"expires": now + authz_lifetime} if valid else {}),
        )
    )
    order_ids = (
        (
            await session.execute(
                select(OrderAuthorization.order_id)
                .join(Order, Order.id == OrderAuthorization.order_id)
                .where(OrderAuthorization.authz_id == authz_id, Order.status == OrderStatus.pending.value)
            )
        )
        .scalars()
        .all()
    )
    for order_id in order_ids:
        statuses = (
            await session.execute(
                select(Authorization.status, Authorization.expires)
                .join(OrderAuthorization, OrderAuthorization.authz_id == Authorization.id)
                .where(OrderAuthorization.order_id == order_id)
            )
        ).all()
        bad = [s for s, _ in statuses if s not in (AuthzStatus.valid.value, AuthzStatus.pending.value)]
        expired = [1 for _, expires in statuses if expires <= now]
        if bad or expired:
            failure = (None if valid else error) or {
                "type": "unauthorized",
                "detail": "an authorization of this order is no longer valid",
            }
            await session.execute(
                update(Order)
                .where(Order.id == order_id, Order.status.in_([OrderStatus.pending.value, OrderStatus.ready.value]))
                .values(status=OrderStatus.invalid.value, error=failure, updated_at=now)
            )
        elif all(s == AuthzStatus.valid.value for s, _ in statuses):
            await session.execute(
                update(Order)
                .where(Order.id == order_id, Order.status == OrderStatus.pending.value)
                .values(status=OrderStatus.ready.value, updated_at=now)
            )
    return True


def scenario(rng: random.Random) -> dict[str, Any]:
    """Authorizations (status, expired?), the challenge's, the orders holding them, the outcome."""
    authzs = [
        (rng.choice(["pending", "pending", "valid", "valid", "invalid", "deactivated"]), rng.random() < 0.15)
        for _ in range(rng.randint(1, 4))
    ]
    authzs[0] = (rng.choice(["pending", "pending", "pending", "valid", "invalid"]), rng.random() < 0.1)
    orders = [
        (
            rng.choice(["pending", "pending", "pending", "ready", "invalid", "processing"]),
            [0] + [i for i in range(1, len(authzs)) if rng.random() < 0.6],
        )
        for _ in range(rng.randint(1, 3))
    ]
    return {
        "authzs": authzs,
        "orders": orders,
        "challenge": rng.choice(["processing", "processing", "processing", "pending"]),
        "error": None if rng.random() < 0.6 else FAILURE,
    }


async def insert(db: Database, account_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    now = utcnow()
    ids: dict[str, Any] = {"authzs": [new_id() for _ in plan["authzs"]], "orders": [], "challenge": new_id()}
    async with db.transaction() as session:
        for authz_id, (status, expired) in zip(ids["authzs"], plan["authzs"], strict=True):
            expires = now + (dt.timedelta(hours=-1) if expired else dt.timedelta(days=1))
            session.add(
                Authorization(
                    id=authz_id,
                    account_id=account_id,
                    identifier_type="dns",
                    identifier_value=f"{authz_id.lower()}.example.test",
                    status=status,
                    expires=expires,
                )
            )
        await session.flush()
        session.add(Challenge(id=ids["challenge"], authz_id=ids["authzs"][0], type="http-01", status=plan["challenge"]))
        for status, held in plan["orders"]:
            order = Order(
                id=new_id(),
                account_id=account_id,
                provisioner="acme",
                status=status,
                expires=now + dt.timedelta(days=1),
                identifiers=[{"type": "dns", "value": "x.example.test"}],
                not_before=None,
                not_after=None,
            )
            ids["orders"].append(order.id)
            session.add(order)
            await session.flush()
            for position, index in enumerate(held):
                session.add(OrderAuthorization(order_id=order.id, authz_id=ids["authzs"][index], position=position))
    return ids


async def rows(db: Database, ids: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    async with db.sessions() as session:
        challenge = await session.get(Challenge, ids["challenge"])
        assert challenge is not None
        authzs = [await session.get(Authorization, authz_id) for authz_id in ids["authzs"]]
        orders = [await session.get(Order, order_id) for order_id in ids["orders"]]
    return {
        "challenge": (challenge.status, challenge.validated is not None, challenge.error),
        "authzs": [(a.status, a.expires > now + dt.timedelta(days=2)) for a in authzs if a is not None],
        "orders": [(o.status, o.error) for o in orders if o is not None],
    }


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Database]:
    await asyncio.to_thread(upgrade, fresh_database_url)  # migrations run asyncio.run themselves
    database = Database(fresh_database_url)
    try:
        yield database
    finally:
        await database.dispose()


async def outcome_via(
    db: Database, via: str, challenge_id: str, error: dict[str, Any] | None
) -> FinishedChallenge | None:
    """Through a Core autocommit connection, as the validator does, or an ORM session."""
    if via == "autocommit":
        async with db.autocommit() as conn:
            return await finish_challenge(conn, challenge_id, error, LIFETIME)
    async with db.transaction() as session:
        return await finish_challenge(session, challenge_id, error, LIFETIME)


@pytest.mark.parametrize("via", ["autocommit", "session"])
async def test_the_outcome_in_three_statements_matches_the_reference(db: Database, via: str) -> None:
    async with db.transaction() as session:
        account = Account(key_thumbprint=new_id(), jwk={"kty": "EC"})
        session.add(account)
        await session.flush()
        account_id = account.id
    rng = random.Random(8555)
    seen: set[tuple[str, ...]] = set()
    left_pending_seen = set()
    for _ in range(SCENARIOS):
        plan = scenario(rng)
        mine, theirs = await insert(db, account_id, plan), await insert(db, account_id, plan)
        before = utcnow()
        finished = await outcome_via(db, via, mine["challenge"], plan["error"])
        async with db.transaction() as session:
            expected = await reference_outcome(session, theirs["challenge"], plan["error"], LIFETIME)
        assert (finished is not None) == expected, plan
        got, want = await rows(db, mine, before), await rows(db, theirs, before)
        assert got == want, plan
        seen.update(status for status, _ in got["orders"])
        if finished is not None:
            assert finished.authz_id == mine["authzs"][0]
            # Every order of a scenario holds the challenge's authorization.
            pending = any(status == "pending" for status, _ in got["orders"])
            left_pending = pending and database.backend() == "postgresql"
            assert finished.orders_left_pending == left_pending, plan
            left_pending_seen.add(finished.orders_left_pending)
    assert {"ready", "invalid", "pending"} <= seen  # the scenarios reach every outcome
    assert left_pending_seen == ({True, False} if database.backend() == "postgresql" else {False})


async def test_record_challenge_outcome_says_whether_anything_changed(db: Database) -> None:
    async with db.transaction() as session:
        account = Account(key_thumbprint=new_id(), jwk={"kty": "EC"})
        session.add(account)
        await session.flush()
        account_id = account.id
    plan = {"authzs": [("pending", False)], "orders": [("pending", [0])], "challenge": "processing", "error": None}
    ids = await insert(db, account_id, plan)
    async with db.autocommit() as conn:
        assert await record_challenge_outcome(conn, ids["challenge"], None, LIFETIME) is True
        assert await record_challenge_outcome(conn, ids["challenge"], None, LIFETIME) is False
