"""The scheduled purge (acme_ra.db.retention): each signer tries hourly; one at a time runs it."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random

from acme_ra.db import retention
from acme_ra.db.engine import Database
from acme_ra_signer import metrics

log = logging.getLogger("acme_ra_signer.purger")

# How often a signer tries to purge (seconds), and the first try after start (plus up to as much
# again at random, so replicas started together do not all try at once).
INTERVAL_SECONDS = 3600.0
FIRST_SECONDS = 60.0


async def purge_once(db: Database, retention_days: int, share: float,
                     stop: asyncio.Event | None = None) -> retention.PurgeReport:
    report = await retention.purge(db, dt.timedelta(days=retention_days), share=share, stop=stop)
    if not report.skipped:
        metrics.PURGE_SECONDS.observe(report.seconds)
        metrics.PURGE_LAST_SUCCESS.set_to_current_time()
        for table, count in report.rows.items():
            metrics.PURGED_ROWS.labels(table).inc(count)
        log.info("purge done", extra={"rows": report.rows, "seconds": round(report.seconds, 3)})
    return report


async def purge_forever(db: Database, retention_days: int, stop: asyncio.Event, share: float) -> None:
    """Purge every INTERVAL_SECONDS until ``stop`` (which also ends a run between two batches);
    a failed run is logged and tried next time."""
    delay = FIRST_SECONDS + random.uniform(0, FIRST_SECONDS)  # spreading, not secrecy
    while True:
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return
        except TimeoutError:
            pass
        try:
            await purge_once(db, retention_days, share, stop)
        except Exception as error:  # noqa: BLE001 - the database away: next hour
            metrics.PURGE_FAILURES.inc()
            log.warning("purge failed: %s", str(error).splitlines()[0] if str(error) else type(error).__name__)
        delay = INTERVAL_SECONDS
