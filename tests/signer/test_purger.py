"""The signer's scheduled purge: runs, counts in metrics, stops with the signer."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from prometheus_client import REGISTRY

from acme_ra.db.engine import Database
from acme_ra.db.models import Order, utcnow
from acme_ra_signer import purger
from tests.support.history import History


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_run_counts_rows_and_time_in_metrics(history_db: Database, history: History) -> None:
    before = sample("acme_ra_purged_rows_total", table="orders")
    runs = sample("acme_ra_purge_duration_seconds_count")
    old, _ = await history.order("invalid", utcnow() - dt.timedelta(days=40))
    report = await purger.purge_once(history_db, 30, share=1.0)
    assert report.rows["orders"] == 1 and await history.present(Order, [old]) == []
    assert sample("acme_ra_purged_rows_total", table="orders") == before + 1
    assert sample("acme_ra_purge_duration_seconds_count") == runs + 1
    assert sample("acme_ra_purge_last_success_timestamp_seconds") > 0


async def test_the_loop_purges_on_schedule_and_stops_with_the_signer(history_db: Database, history: History,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(purger, "FIRST_SECONDS", 0.05)
    monkeypatch.setattr(purger, "INTERVAL_SECONDS", 0.1)
    old, _ = await history.order("invalid", utcnow() - dt.timedelta(days=40))
    stop = asyncio.Event()
    loop = asyncio.create_task(purger.purge_forever(history_db, 30, stop, share=1.0))
    for _ in range(100):
        if not await history.present(Order, [old]):
            break
        await asyncio.sleep(0.05)
    assert await history.present(Order, [old]) == []
    stop.set()
    await asyncio.wait_for(loop, 2)
