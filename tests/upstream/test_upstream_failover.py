"""Failover between two real Pebbles (EAB), the ordered upstreams of the default list.

An order moves from the first upstream to the second only once the first's circuit breaker is
open and only while nothing was finalized at the first: never two certificates for one order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import utcnow
from acme_ra_signer.upstream.acme import AcmeDriver, AcmeUpstream
from acme_ra_signer.upstream.base import IssueRequest, UpstreamUnavailable
from acme_ra_signer.upstream.breaker import FAILURES_TO_OPEN, State
from acme_ra_signer.upstream.journal import DbJournal
from acme_ra_signer.worker import IssueWorker

from .conftest import (
    TEST_LEASE_SECONDS,
    certificate_count,
    certificate_of,
    make_acme_driver,
    new_order,
    order_row,
    run_job,
    upstream_accounts,
    upstream_order_row,
)
from .pebble import Pebble, require_pebble


@pytest.fixture
def pebbles(tmp_path: Path) -> Iterator[tuple[Pebble, Pebble]]:
    require_pebble()
    first = Pebble(tmp_path / "pebble-a")
    try:
        second = Pebble(tmp_path / "pebble-b")
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def two_upstreams(tmp_path: Path, settings: Settings, a: Pebble, b: Pebble) -> Settings:
    config = tmp_path / "acme-ra.yaml"
    entries = "".join(
        f"""  {name}:
    directory_url: {p.directory_url}
    eab_kid: {p.eab_kid}
    eab_hmac_key: {p.eab_hmac_key}
    ca_bundle: {p.ca_bundle}
"""
        for name, p in (("a", a), ("b", b))
    )
    config.write_text(f"upstreams:\n{entries}default_upstreams: [a, b]\n")
    return settings.model_copy(
        update={"config_file": config, "upstream_directory_url": "", "upstream_eab_kid": "", "upstream_eab_hmac_key": None}
    )


@pytest.fixture
async def failover_driver(
    tmp_path: Path, settings: Settings, db: Database, pebbles: tuple[Pebble, Pebble]
) -> AsyncIterator[AcmeDriver]:
    driver = make_acme_driver(two_upstreams(tmp_path, settings, *pebbles), db)
    try:
        yield driver
    finally:
        await driver.close()


def failovers(source: str = "a", target: str = "b") -> float:
    value = REGISTRY.get_sample_value(
        "acme_ra_upstream_failovers_total", {"from_upstream": source, "to_upstream": target}
    )
    return value or 0.0


def breaker_gauge(upstream: str) -> float | None:
    return REGISTRY.get_sample_value("acme_ra_upstream_breaker_state", {"upstream": upstream})


async def until_issued(worker: IssueWorker, order_id: str, attempts: int) -> int:
    """Run the job as redeliveries would until it stops raising; returns the failed runs."""
    failed = 0
    for _ in range(attempts):
        try:
            await run_job(worker, order_id)
            return failed
        except UpstreamUnavailable:
            failed += 1
    raise AssertionError(f"order {order_id} not issued in {attempts} runs")


async def request_of(db: Database, order_id: str) -> IssueRequest:
    order = await order_row(db, order_id)
    assert order.csr is not None
    return IssueRequest(order_id=order_id, csr_der=order.csr, identifiers=list(order.identifiers))


async def test_first_down_the_order_moves_to_the_second_once_the_breaker_opens(
    pebbles: tuple[Pebble, Pebble], failover_driver: AcmeDriver, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pebbles
    driver = failover_driver
    worker = IssueWorker(db, driver)
    await driver.check()  # both accounts registered
    order_id = await new_order(db, ["moved.example.test"])
    # An upstream order really created at the first upstream, never finalized...
    async with DbJournal.claim(db, order_id, "a", TEST_LEASE_SECONDS) as journal:
        first = driver.upstreams["a"]
        assert isinstance(first, AcmeUpstream)
        await first._create_order(await request_of(db, order_id), journal)
    abandoned = (await upstream_order_row(db, order_id)).url  # type: ignore[union-attr]
    assert abandoned is not None and f":{a.port}/" in abandoned
    # ... then the first upstream goes down.
    a.stop()
    before = failovers()
    caplog.set_level(logging.WARNING, logger="acme_ra_signer.upstream.acme")
    failed = await until_issued(worker, order_id, FAILURES_TO_OPEN + 1)
    # One error does not move the order; the breaker opening does, within the same job.
    assert failed == FAILURES_TO_OPEN - 1
    assert (await order_row(db, order_id)).status == "valid"
    assert await certificate_count(db, order_id) == 1
    assert a.issued_count() == 0 and b.issued_count() == 1
    row = await upstream_order_row(db, order_id)
    assert row is not None and row.upstream == "b" and row.state == "valid"
    assert row.url is not None and f":{b.port}/" in row.url
    assert row.orders_created == 2  # the abandoned one at a, then b's
    serial = (await certificate_of(db, order_id)).serial
    assert b.cert_status(serial)["Status"] == "Valid"
    assert failovers() == before + 1
    assert driver.breakers["a"].state is State.open and breaker_gauge("a") == 2
    assert driver.breakers["b"].state is State.closed and breaker_gauge("b") == 0
    assert any("abandoned" in r.getMessage() and abandoned == getattr(r, "upstream_order", None) for r in caplog.records)
    described = {entry["name"]: entry["breaker"] for entry in driver.describe()}
    assert described["a"]["state"] == "open" and "unreachable" in str(described["a"]["last_error"])
    assert described["b"] == {"state": "closed", "consecutive_failures": 0}

    # While the breaker is open, a new order goes straight to the second: no failed run.
    second = await new_order(db, ["skipped.example.test"])
    assert await until_issued(worker, second, 1) == 0
    assert (await upstream_order_row(db, second)).upstream == "b"  # type: ignore[union-attr]
    assert failovers() == before + 2 and b.issued_count() == 2

    # The first comes back, having forgotten its accounts. After the cool-down the readiness
    # check is the breaker's probe: it registers again, the breaker closes.
    a.start()
    driver.breakers["a"].cool_down_seconds = 0.0
    assert driver.breakers["a"].state is State.half_open and breaker_gauge("a") == 1
    await driver.check()
    assert driver.breakers["a"].state is State.closed and breaker_gauge("a") == 0
    registrations = {account.upstream: account.registrations for account in await upstream_accounts(db)}
    assert registrations == {"a": 2, "b": 1}
    third = await new_order(db, ["back.example.test"])
    assert await until_issued(worker, third, 1) == 0
    assert (await upstream_order_row(db, third)).upstream == "a"  # type: ignore[union-attr]
    assert a.issued_count() == 1 and b.issued_count() == 2
    assert failovers() == before + 2


async def test_a_half_open_breaker_lets_the_next_real_request_probe(
    pebbles: tuple[Pebble, Pebble], failover_driver: AcmeDriver, db: Database
) -> None:
    a, b = pebbles
    driver = failover_driver
    worker = IssueWorker(db, driver)
    a.stop()
    first = await new_order(db, ["one.example.test"])
    assert await until_issued(worker, first, FAILURES_TO_OPEN) == FAILURES_TO_OPEN - 1
    a.start()
    driver.breakers["a"].cool_down_seconds = 0.0
    probe = await new_order(db, ["probe.example.test"])
    assert await until_issued(worker, probe, 1) == 0  # the probe: issued at a, which registered
    assert (await upstream_order_row(db, probe)).upstream == "a"  # type: ignore[union-attr]
    assert driver.breakers["a"].state is State.closed
    assert a.issued_count() == 1 and b.issued_count() == 1


async def test_an_order_finalized_at_the_first_never_moves(
    pebbles: tuple[Pebble, Pebble], failover_driver: AcmeDriver, db: Database
) -> None:
    a, b = pebbles
    driver = failover_driver
    worker = IssueWorker(db, driver)
    order_id = await new_order(db, ["finalized.example.test"])
    async with DbJournal.claim(db, order_id, "a", TEST_LEASE_SECONDS) as journal:
        first = driver.upstreams["a"]
        assert isinstance(first, AcmeUpstream)
        await first._create_order(await request_of(db, order_id), journal)
        # What the driver records before it sends finalize: from here on, never another order.
        await journal.save(state="finalizing", finalized_at=utcnow())
    a.stop()
    before = failovers()
    for _ in range(FAILURES_TO_OPEN + 2):
        with pytest.raises(UpstreamUnavailable):
            await run_job(worker, order_id)  # raised: the job is nak'ed and retried later
    assert driver.breakers["a"].state is State.open
    row = await upstream_order_row(db, order_id)
    assert row is not None and row.upstream == "a" and row.state == "finalizing" and row.orders_created == 1
    assert (await order_row(db, order_id)).status == "processing"
    assert await certificate_count(db, order_id) == 0
    assert b.issued_count() == 0 and failovers() == before
