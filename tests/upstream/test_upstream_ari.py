"""ARI relayed (RFC 9773): the signer reads the window its upstream suggests for each certificate
it issued (at issuance, then after each Retry-After), stores it for the frontends, keeps it when
the upstream does not answer, and never overwrites an operator's renew-early."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import update

from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import RenewalWindow, utcnow
from acme_ra_admin.renewals import RenewEarly, renew_early
from acme_ra_signer.renewal_relay import RenewalRelay
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.worker import IssueWorker

from .ari_front import AriFront
from .conftest import acme_settings, certificate_of, make_acme_driver, new_order, run_job, wait_until
from .pebble import Pebble, b64url


@pytest.fixture
def ari(pebble: Pebble) -> Iterator[AriFront]:
    front = AriFront(pebble)
    try:
        yield front
    finally:
        front.close()


async def window_of(db: Database, certificate_id: str) -> RenewalWindow | None:
    async with db.sessions() as session:
        return await session.get(RenewalWindow, certificate_id)


async def make_due(db: Database, certificate_id: str) -> None:
    async with db.transaction() as session:
        await session.execute(update(RenewalWindow).where(RenewalWindow.certificate_id == certificate_id)
                              .values(next_fetch_at=utcnow() - dt.timedelta(seconds=1)))


def cert_id_of(leaf: x509.Certificate) -> str:
    """RFC 9773 §4.1, computed here from the certificate itself."""
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki is not None
    serial = leaf.serial_number.to_bytes((leaf.serial_number.bit_length() + 8) // 8, "big")
    return f"{b64url(aki)}.{b64url(serial)}"


async def test_upstream_window_is_relayed_refreshed_kept_and_yields_to_renew_early(
    tmp_path: Path, pebble: Pebble, ari: AriFront, fresh_database_url: str
) -> None:
    settings = acme_settings(tmp_path, pebble, fresh_database_url, upstream_directory_url=ari.directory_url)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(upgrade, settings.effective_database_url)
    db = Database(settings.effective_database_url)
    driver = make_acme_driver(settings, db)
    relay = RenewalRelay(db, driver)
    try:
        order_id = await new_order(db, ["ari.example.test"])
        await run_job(IssueWorker(db, driver, relay=relay), order_id)
        cert = await certificate_of(db, order_id)
        leaf = x509.load_pem_x509_certificate(cert.chain_pem.encode())

        # At issuance, in the background: the upstream's window and explanation, as it said them.
        async def relayed() -> bool:
            row = await window_of(db, cert.id)
            return row is not None and row.start is not None
        await wait_until(relayed, timeout=60)
        row = await window_of(db, cert.id)
        assert row is not None and row.source == "upstream" and row.upstream == "default"
        assert (row.start, row.end) == (ari.start, ari.end)
        assert row.explanation_url == "https://ca.example.test/ari-explained"
        assert ari.asked == [cert_id_of(leaf)]
        # Read again after the upstream's Retry-After (an hour), not before.
        assert row.next_fetch_at is not None
        assert dt.timedelta(minutes=55) < row.next_fetch_at - utcnow() <= dt.timedelta(hours=1)
        assert await relay.relay_once() == 0 and len(ari.asked) == 1

        # The upstream changes its mind (an incident: renew now); the next read relays it.
        ari.start, ari.end = utcnow() - dt.timedelta(hours=3), utcnow() - dt.timedelta(hours=2)
        ari.start, ari.end = ari.start.replace(microsecond=0), ari.end.replace(microsecond=0)
        ari.explanation_url, ari.retry_after = "https://ca.example.test/incident", 120
        await make_due(db, cert.id)
        assert await relay.relay_once() == 1
        row = await window_of(db, cert.id)
        assert row is not None and (row.start, row.end) == (ari.start, ari.end)
        assert row.explanation_url == "https://ca.example.test/incident"

        # The upstream does not answer: the window stays, the next read backs off.
        ari.down = True
        await make_due(db, cert.id)
        assert await relay.relay_once() == 0
        row = await window_of(db, cert.id)
        assert row is not None and (row.start, row.end) == (ari.start, ari.end) and row.fetch_failures == 1
        assert row.next_fetch_at is not None and row.next_fetch_at > utcnow()
        ari.down = False

        # An operator's renew-early wins over the upstream's window, which is not read any more.
        moved = await renew_early(db, RenewEarly(serial=":".join(f"{b:02X}" for b in
                                                                 leaf.serial_number.to_bytes(20, "big"))))
        assert moved["certificates"] == 1 and moved["serials"] == [cert.serial]
        asked = len(ari.asked)
        assert await relay.refresh(cert.id) is False and len(ari.asked) == asked
        row = await window_of(db, cert.id)
        assert row is not None and row.source == "operator" and row.next_fetch_at is None
        assert row.end is not None and row.end < utcnow()
    finally:
        await relay.close()
        await driver.close()
        await db.dispose()


async def test_an_upstream_without_renewal_info_stores_nothing(db: Database, driver: AcmeDriver) -> None:
    relay = RenewalRelay(db, driver)
    try:
        order_id = await new_order(db, ["plain.example.test"])
        await run_job(IssueWorker(db, driver), order_id)
        cert = await certificate_of(db, order_id)
        assert await relay.refresh(cert.id) is False
        assert await window_of(db, cert.id) is None
    finally:
        await relay.close()


async def test_no_read_after_issuance_from_an_upstream_without_renewal_info(db: Database, driver: AcmeDriver) -> None:
    relay = RenewalRelay(db, driver)
    try:
        order_id = await new_order(db, ["unread.example.test"])
        await run_job(IssueWorker(db, driver, relay=relay), order_id)
        cert = await certificate_of(db, order_id)
        # Pebble 2.4's directory has no renewalInfo, and the issuance read it: nothing to relay.
        assert driver.offers_renewal_info("default") is False
        assert driver.offers_renewal_info("not-configured") is False
        relay.issued(cert.id, "default")
        assert not relay._tasks
        assert await window_of(db, cert.id) is None
    finally:
        await relay.close()
