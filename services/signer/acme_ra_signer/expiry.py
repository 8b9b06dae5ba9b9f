"""The expiry gauges (acme_ra_certificates_expiring): certificates about to lapse that nothing
replaced, per upstream, refreshed every minute from the inventory (acme_ra.db.inventory)."""

from __future__ import annotations

import asyncio
import logging

from acme_ra.db import inventory
from acme_ra.db.engine import Database
from acme_ra.db.models import utcnow
from acme_ra_signer import metrics

log = logging.getLogger("acme_ra_signer.expiry")

REFRESH_SECONDS = 60.0


async def refresh_once(db: Database, upstreams: list[str]) -> dict[tuple[str, str], int]:
    """Set the gauges; every configured upstream gets a value (0 when nothing lapses)."""
    async with db.transaction() as session:
        counts = await inventory.expiring_unreplaced(session, utcnow())
    labels = {(name, window) for name in upstreams for window in inventory.GAUGE_WINDOWS} | set(counts)
    for upstream, window in labels:
        metrics.CERTIFICATES_EXPIRING.labels(upstream, window).set(counts.get((upstream, window), 0))
    return counts


async def refresh_forever(db: Database, upstreams: list[str], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await refresh_once(db, upstreams)
        except Exception as error:  # noqa: BLE001 - figures are advisory; next minute
            log.warning("expiry gauges not refreshed: %s", str(error).splitlines()[0] if str(error) else type(error).__name__)
        try:
            await asyncio.wait_for(stop.wait(), REFRESH_SECONDS)
        except TimeoutError:
            pass
