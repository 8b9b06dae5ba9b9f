"""Retention (acme_ra.db.retention) on the lane's database: what goes, what stays, dry runs that
count what a run deletes, batches, and one purger at a time on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from acme_ra.config import ENV_PREFIX
from acme_ra.db import retention
from acme_ra.db.engine import Database
from acme_ra.db.models import Authorization, Certificate, Challenge, Order, OrderAuthorization, UpstreamOrder, utcnow
from tests.admin.conftest import acme_ra
from tests.support import database
from tests.support.history import History
from tests.support.lab import base_environment

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
RETENTION = dt.timedelta(days=30)
LONG_AGO = NOW - dt.timedelta(days=40)  # past the retention
LATELY = NOW - dt.timedelta(days=10)  # within it


async def test_finished_orders_go_after_the_retention_and_the_rest_stays(history_db: Database, history: History) -> None:
    expired_invalid, expired_authz = await history.order("invalid", LONG_AGO)
    expired_pending, _ = await history.order("pending", LONG_AGO)
    recent_invalid, recent_authz = await history.order("invalid", LATELY)
    stuck, _ = await history.order("processing", LONG_AGO)
    old_certificate, _ = await history.order("valid", LONG_AGO, not_after=LONG_AGO)
    # A certificate still valid (or expired within the retention): its order, and the expired
    # authorization it links to, stay.
    live_certificate, live_authz = await history.order("valid", LONG_AGO, not_after=NOW + dt.timedelta(days=60))
    revoked, revoked_authz = await history.order("valid", LONG_AGO, not_after=LONG_AGO, revoked=True)

    report = await retention.purge(history_db, RETENTION, now=NOW)

    gone = [expired_invalid, expired_pending, old_certificate]
    kept = [recent_invalid, stuck, live_certificate, revoked]
    assert await history.present(Order, gone + kept) == sorted(kept)
    assert await history.present(Certificate, [old_certificate, live_certificate, revoked], "order_id") == sorted(
        [live_certificate, revoked])
    assert await history.present(Authorization, expired_authz + recent_authz + live_authz + revoked_authz) == sorted(
        recent_authz + live_authz)
    # The revocation record stays; what hung on it goes.
    assert await history.present(OrderAuthorization, [revoked], "order_id") == []
    assert await history.present(UpstreamOrder, [revoked, recent_invalid], "order_id") == [recent_invalid]
    assert report.rows == {"orders": 3, "certificates": 1, "authorizations": 4, "challenges": 4,
                           "upstream_orders": 4, "order_authorizations": 4}
    assert not report.skipped and report.seconds > 0
    # A second run finds nothing more.
    again = await retention.purge(history_db, RETENTION, now=NOW)
    assert set(again.rows.values()) == {0}


async def test_an_authorization_shared_by_orders_goes_with_the_last_of_them(history_db: Database, history: History) -> None:
    first, shared = await history.order("invalid", LONG_AGO)
    later, _ = await history.order("valid", LONG_AGO, authz=shared, not_after=LATELY)
    await retention.purge(history_db, RETENTION, now=NOW)
    assert await history.present(Order, [first, later]) == [later]
    assert await history.present(Authorization, shared) == shared
    await retention.purge(history_db, RETENTION, now=NOW + dt.timedelta(days=30))
    assert await history.present(Order, [later]) == []
    assert await history.present(Authorization, shared) == []
    assert await history.present(Challenge, shared, "authz_id") == []


async def test_a_dry_run_counts_what_a_run_deletes_and_deletes_nothing(history_db: Database, history: History) -> None:
    _, shared = await history.order("invalid", LONG_AGO)
    await history.order("invalid", LONG_AGO, authz=shared)  # one authorization, two orders, one batch
    for _ in range(5):
        await history.order("invalid", LONG_AGO)
        await history.order("valid", LONG_AGO, not_after=LONG_AGO)
        await history.order("valid", LONG_AGO, not_after=LONG_AGO, revoked=True)
        await history.order("pending", LATELY)
    before = await history.counts()
    dry = await retention.purge(history_db, RETENTION, now=NOW, dry_run=True, batch=4)
    assert await history.counts() == before
    real = await retention.purge(history_db, RETENTION, now=NOW, batch=4)  # several batches per step
    assert dry.rows == real.rows
    assert real.rows["orders"] == 12 and real.rows["certificates"] == 5
    after = await history.counts()
    assert {name: before[name] - after[name] for name in before} == real.rows


async def test_retention_zero_days_is_refused_by_the_purge_itself(history_db: Database) -> None:
    with pytest.raises(ValueError, match="ACME_RA_RETENTION_DAYS"):
        await retention.purge(history_db, dt.timedelta(0), now=NOW)


@pytest.mark.skipif(database.backend() != "postgresql", reason="the advisory lock is PostgreSQL's")
async def test_one_replica_purges_at_a_time(history_db: Database, history: History) -> None:
    await history.order("invalid", LONG_AGO)
    other = Database(history_db.url)
    try:
        async with other.engine.connect() as holder:
            assert (await holder.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                         {"key": retention.ADVISORY_LOCK_KEY})).scalar_one()
            skipped = await retention.purge(history_db, RETENTION, now=NOW)
            assert skipped.skipped and set(skipped.rows.values()) == {0}
            await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": retention.ADVISORY_LOCK_KEY})
        # The other replica is done: the lock is free again.
        done = await retention.purge(history_db, RETENTION, now=NOW)
        assert not done.skipped and done.rows["orders"] == 1
    finally:
        await other.dispose()


async def test_a_purge_rests_its_share_and_stops_between_batches(history_db: Database, history: History,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(7):
        await history.order("invalid", LONG_AGO)
    rests: list[float] = []
    stop = asyncio.Event()

    async def rest(seconds: float, _stop: asyncio.Event | None) -> None:
        rests.append(seconds)
        if len(rests) == 2:
            stop.set()  # SIGTERM to acme-ra db purge, say

    monkeypatch.setattr(retention, "_rest", rest)
    # share 0.25: after each batch of t seconds, a rest of 3 t; stopped after the second batch.
    report = await retention.purge(history_db, RETENTION, now=NOW, batch=2, share=0.25, stop=stop)
    assert report.stopped and report.rows["orders"] == 4 and report.as_dict()["stopped"] is True
    assert len(rests) == 2 and all(seconds > 0 for seconds in rests)
    # What was deleted stays deleted; the next run goes on from there, and at full speed rests not.
    rests.clear()
    rest_of_it = await retention.purge(history_db, RETENTION, now=NOW, batch=2, share=1.0)
    assert not rest_of_it.stopped and rest_of_it.rows["orders"] == 3 and rests == []
    with pytest.raises(ValueError, match="share"):
        await retention.purge(history_db, RETENTION, now=NOW, share=0)


async def test_purging_while_orders_are_written_loses_none(history_db: Database, history: History) -> None:
    for _ in range(20):
        await history.order("invalid", LONG_AGO)
    purging = asyncio.create_task(retention.purge(history_db, RETENTION, now=NOW, batch=3))
    created = [order_id for order_id, _ in await asyncio.gather(
        *(history.order("pending", NOW + dt.timedelta(days=1)) for _ in range(10)))]
    report = await purging
    assert report.rows["orders"] == 20
    assert await history.present(Order, created) == sorted(created)


async def test_the_purge_command_counts_then_deletes(history_url: str, history_db: Database, history: History,
                                                     tmp_path: Path) -> None:
    old, _ = await history.order("invalid", utcnow() - dt.timedelta(days=40))
    recent, _ = await history.order("invalid", utcnow() - dt.timedelta(days=10))
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path), f"{ENV_PREFIX}DATABASE_URL": history_url}
    dry = json.loads(acme_ra(["db", "purge", "--dry-run", "--json"], env, check=True).stdout)
    assert dry["dry_run"] and dry["rows"]["orders"] == 1 and dry["rows"]["challenges"] == 1
    assert await history.present(Order, [old, recent]) == sorted([old, recent])
    done = acme_ra(["db", "purge"], env, check=True).stdout
    assert "(30 days) deleted" in done and "orders                 1" in done
    assert await history.present(Order, [old, recent]) == [recent]
    kept = acme_ra(["db", "purge"], env | {f"{ENV_PREFIX}RETENTION_DAYS": "0"})
    assert kept.returncode == 2 and kept.stderr.strip() == "acme-ra: ACME_RA_RETENTION_DAYS=0 keeps everything: nothing to purge"
