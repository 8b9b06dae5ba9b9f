"""``python -m bench.history`` (run as a command: this package's name hides the top-level
``bench`` from the tests) fills a migrated database with the mix it promises, through the
services' schema, on the lane's database; the retention purge then finds what is old."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from acme_ra.db import retention
from acme_ra.db.engine import Database
from acme_ra.db.models import Certificate, Challenge, Order

ROOT = Path(__file__).resolve().parents[2]


def history(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.history", "--database-url", database_url, *args],
                          check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)


async def test_the_history_has_the_promised_mix_and_the_purge_trims_it(history_url: str) -> None:
    done = await asyncio.to_thread(history, history_url, "--orders", "3000", "--years", "3", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert rows["orders"] == rows["authorizations"] == rows["order_authorizations"] == 3000
    assert rows["challenges"] == 9000 and rows["accounts"] == 30
    assert 0.70 < rows["certificates"] / 3000 < 0.83  # issued and revoked: 76 %
    db = Database(history_url)
    try:
        async with db.transaction() as session:
            statuses = dict((await session.execute(select(Order.status, func.count()).group_by(Order.status))).all())
            revoked = (await session.execute(
                select(func.count()).select_from(Certificate).where(Certificate.revoked_at.is_not(None)))).scalar_one()
        assert set(statuses) == {"valid", "invalid", "pending"} and revoked > 0
        # Three years of history against a 30-day retention: nearly all of it goes, revocations stay.
        report = await retention.purge(db, dt.timedelta(days=30))
        assert report.rows["orders"] > 0.9 * 3000 - revoked
        async with db.transaction() as session:
            left = (await session.execute(select(func.count()).select_from(Certificate))).scalar_one()
            challenges = (await session.execute(select(func.count()).select_from(Challenge))).scalar_one()
        assert left >= revoked and challenges < 0.1 * 9000
    finally:
        await db.dispose()


def test_the_command_line_says_what_it_wrote(history_url: str) -> None:
    done = history(history_url, "--orders", "50")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("50 orders in ") and "challenges 150" in done.stdout
    bad = history(history_url, "--orders", "0")
    assert bad.returncode == 2 and "--orders must be at least 1" in bad.stderr
