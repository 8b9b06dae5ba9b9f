"""ARI relayed (RFC 9773): the renewal window an upstream CA suggests for a certificate it issued,
read by the signer and stored (``renewal_windows``) for the frontends' renewalInfo to serve.

Read at issuance (in the background: issuance never waits for it), then again when the
upstream's ``Retry-After`` has passed (``relay_forever``, every ACME_RA_UPSTREAM_ARI_POLL_SECONDS
at most), until the certificate expires. A failed read is tried again with a backoff; the
window stored before stays served meanwhile. An operator's window (``acme-ra certs
renew-early``) is never overwritten, and replicas claim a due row before reading it, so that
each read happens once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from cryptography import x509
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from acme_ra.db.engine import Database
from acme_ra.db.models import Certificate, RenewalWindow, UpstreamOrder, utcnow
from acme_ra_signer.upstream.base import UpstreamDriver, UpstreamError

log = logging.getLogger("acme_ra_signer.renewal_relay")

# Without the upstream's Retry-After, the window is read again after this long (seconds; RFC 9773
# suggests clients ask every 6 hours).
DEFAULT_RETRY_AFTER_SECONDS = 6 * 3600.0
# A Retry-After is honoured within these bounds (seconds): never a tight loop, never months.
MIN_RETRY_AFTER_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 7 * 86400.0
# After a failed read: first wait, doubling up to DEFAULT_RETRY_AFTER_SECONDS (seconds).
FAILURE_FIRST_SECONDS = 60.0
# How long a replica's claim on a due row lasts before another may read it (seconds).
CLAIM_SECONDS = 300.0
# Due rows read per pass.
BATCH = 100

SOURCE_UPSTREAM = "upstream"
SOURCE_OPERATOR = "operator"


class RenewalRelay:
    """Reads the upstreams' windows for the certificates they issued, and stores them."""

    def __init__(self, db: Database, driver: UpstreamDriver, poll_seconds: float = 60.0) -> None:
        self.db = db
        self.driver = driver
        self.poll_seconds = poll_seconds
        self._tasks: set[asyncio.Task[None]] = set()

    def issued(self, certificate_id: str, upstream: str) -> None:
        """A certificate was just stored: read its upstream's window in the background, unless
        that upstream surely has none (then the certificate gets the computed window, as before;
        the read was most of the signer's database work per certificate for such upstreams)."""
        if not self.driver.offers_renewal_info(upstream):
            return
        task = asyncio.create_task(self._first_read(certificate_id), name=f"ari-{certificate_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _first_read(self, certificate_id: str) -> None:
        try:
            await self.refresh(certificate_id)
        except Exception as error:  # noqa: BLE001 - the certificate is issued; the poll retries
            log.warning("renewal window not read: %s", error, extra={"certificate_id": certificate_id})

    async def refresh(self, certificate_id: str) -> bool:
        """Read and store the upstream's window for one certificate; False when there is none to
        relay (no upstream, one without renewalInfo, an operator's window, an expired certificate)."""
        async with self.db.sessions() as session:
            row = (
                await session.execute(
                    select(Certificate.chain_pem, Certificate.not_after, UpstreamOrder.upstream)
                    .join(UpstreamOrder, UpstreamOrder.order_id == Certificate.order_id)
                    .where(Certificate.id == certificate_id)
                )
            ).first()
            stored = await session.get(RenewalWindow, certificate_id)
        if row is None or (stored is not None and stored.source == SOURCE_OPERATOR):
            return False
        now = utcnow()
        if row.not_after <= now:
            await self._store(certificate_id, row.upstream, None, None, None, None, stored)
            return False
        leaf = x509.load_pem_x509_certificate(row.chain_pem.encode())
        try:
            info = await self.driver.renewal_info(row.upstream, leaf)
        except UpstreamError as error:
            failures = (stored.fetch_failures if stored is not None else 0) + 1
            wait = min(FAILURE_FIRST_SECONDS * 2 ** (failures - 1), DEFAULT_RETRY_AFTER_SECONDS)
            await self._store(certificate_id, row.upstream, None, None, None, now + dt.timedelta(seconds=wait),
                              stored, failures=failures)
            log.warning("renewal window not read from upstream %s: %s", row.upstream, error,
                        extra={"certificate_id": certificate_id, "upstream": row.upstream})
            return False
        if info is None:
            if stored is not None:  # the upstream stopped offering renewalInfo: computed window
                await self._store(certificate_id, row.upstream, None, None, None, None, stored)
            return False
        retry = info.retry_after if info.retry_after is not None else DEFAULT_RETRY_AFTER_SECONDS
        retry = min(max(retry, MIN_RETRY_AFTER_SECONDS), MAX_RETRY_AFTER_SECONDS)
        await self._store(certificate_id, row.upstream, info.start, info.end, info.explanation_url,
                          now + dt.timedelta(seconds=retry), stored)
        log.info("renewal window relayed", extra={"certificate_id": certificate_id, "upstream": row.upstream,
                                                  "start": info.start.isoformat(), "end": info.end.isoformat()})
        return True

    async def _store(
        self,
        certificate_id: str,
        upstream: str,
        start: dt.datetime | None,
        end: dt.datetime | None,
        explanation_url: str | None,
        next_fetch_at: dt.datetime | None,
        stored: RenewalWindow | None,
        failures: int = 0,
    ) -> None:
        """Insert or update the upstream's row (``start`` None with failures: keep the window);
        never over an operator's window written meanwhile."""
        values: dict[str, object] = {"upstream": upstream, "next_fetch_at": next_fetch_at,
                                     "fetch_failures": failures, "updated_at": utcnow()}
        if start is not None or not failures:
            values.update(start=start, end=end, explanation_url=explanation_url)
        async with self.db.sessions() as session:
            if stored is None:
                if start is None and not failures:
                    return  # nothing to remember
                session.add(RenewalWindow(certificate_id=certificate_id, source=SOURCE_UPSTREAM, **values))
                try:
                    await session.commit()
                except IntegrityError:  # another replica or renew-early wrote it first
                    await session.rollback()
                return
            await session.execute(
                update(RenewalWindow)
                .where(RenewalWindow.certificate_id == certificate_id, RenewalWindow.source == SOURCE_UPSTREAM)
                .values(**values)
            )
            await session.commit()

    async def due(self, limit: int = BATCH) -> list[str]:
        """Claim the upstream windows due to be read again (pushing their time by CLAIM_SECONDS)."""
        now = utcnow()
        claimed: list[str] = []
        async with self.db.sessions() as session:
            rows = (
                await session.execute(
                    select(RenewalWindow.certificate_id, RenewalWindow.next_fetch_at)
                    .where(RenewalWindow.source == SOURCE_UPSTREAM, RenewalWindow.next_fetch_at <= now)
                    .order_by(RenewalWindow.next_fetch_at)
                    .limit(limit)
                )
            ).all()
            for certificate_id, next_fetch_at in rows:
                result = await session.execute(
                    update(RenewalWindow)
                    .where(RenewalWindow.certificate_id == certificate_id,
                           RenewalWindow.next_fetch_at == next_fetch_at)
                    .values(next_fetch_at=now + dt.timedelta(seconds=CLAIM_SECONDS))
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(certificate_id)
            await session.commit()
        return claimed

    async def relay_once(self) -> int:
        """Read every due window once, a batch at a time; the number read."""
        read = 0
        while True:
            batch = await self.due()
            for certificate_id in batch:
                try:
                    read += await self.refresh(certificate_id)
                except Exception as error:  # noqa: BLE001 - one certificate's trouble stops no other
                    log.warning("renewal window not read: %s", error, extra={"certificate_id": certificate_id})
            if len(batch) < BATCH:
                return read

    async def relay_forever(self, stop: asyncio.Event) -> None:
        """``relay_once`` every ``poll_seconds`` until ``stop``."""
        while not stop.is_set():
            try:
                await self.relay_once()
            except Exception as error:  # noqa: BLE001 - the database away: next time
                log.warning("renewal windows not relayed: %s", str(error).splitlines()[0] if str(error) else error)
            try:
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
            except TimeoutError:
                pass

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
