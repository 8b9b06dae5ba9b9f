"""Rate counters (fixed windows, shared by every replica) and the counts rate limits read."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from acme_ra.db.fast import Statement
from acme_ra.db.models import Authorization, AuthzStatus, RateCounter


def _increment_statement(insert: Any) -> Any:
    return (
        insert(RateCounter)
        .values(key=bindparam("key"), window_start=bindparam("window_start"), count=1)
        .on_conflict_do_update(index_elements=["key", "window_start"], set_={"count": RateCounter.count + 1})
        .returning(RateCounter.count)
    )


# One upsert per event counted, built once per dialect.
_INCREMENT = {"postgresql": Statement(_increment_statement(pg_insert)),
              "sqlite": Statement(_increment_statement(sqlite_insert))}

# The account's pending authorizations that have not expired (a pending one past its expiry is
# expired, whether or not a read has recorded it yet), and when the first of them expires:
# an index range scan (ix_authz_pending_account: account, status, expires).
_PENDING_AUTHZS = Statement(
    select(func.count(), func.min(Authorization.expires)).where(
        Authorization.account_id == bindparam("account_id"),
        Authorization.status == AuthzStatus.pending,
        Authorization.expires > bindparam("now"),
    )
)


async def increment(conn: AsyncConnection, key: str, window_start: dt.datetime) -> int:
    """Count one event under ``key`` in the window starting at ``window_start``; the new count."""
    result = await _INCREMENT[conn.dialect.name].run(conn, {"key": key, "window_start": window_start})
    return int(result.scalar_one())


async def pending_authzs(conn: AsyncConnection, account_id: str, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """How many of the account's authorizations are pending at ``now``, and when the first expires."""
    count, first_expiry = (await _PENDING_AUTHZS.run(conn, {"account_id": account_id, "now": now})).first()
    return count, first_expiry


async def purge_counters_before(session: AsyncSession, before: dt.datetime) -> None:
    await session.execute(delete(RateCounter).where(RateCounter.window_start < before))
