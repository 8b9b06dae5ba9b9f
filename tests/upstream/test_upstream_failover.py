"""Failover between two real Pebbles (EAB), the ordered upstreams of the default list.

An order moves from the first upstream to the second only once the first's circuit breaker is
open and only while nothing was finalized at the first: never two certificates for one order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import REGISTRY

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import utcnow
from acme_ra_signer.upstream.acme import AcmeUpstream
from acme_ra_signer.upstream.base import IssueRequest, UpstreamUnavailable
from acme_ra_signer.upstream.breaker import FAILURES_TO_OPEN, State
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.upstream.journal import DbJournal
from acme_ra_signer.worker import IssueWorker
from tests.signer.test_signer_upstream_failover_config import state_of

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
    wait_until,
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


def _async(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


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
    caplog.set_level(logging.WARNING, logger="acme_ra_signer.upstream.failover")
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
    certificate = await certificate_of(db, order_id)
    assert b.cert_status(certificate.serial)["Status"] == "Valid"
    # Revocation goes to the upstream the journal names: the second.
    leaf = x509.load_pem_x509_certificate(certificate.chain_pem.encode())
    await driver.revoke(leaf.public_bytes(Encoding.DER), 4, order_id=order_id)
    assert b.cert_status(certificate.serial)["Status"] == "Revoked"
    assert failovers() == before + 1
    assert state_of(driver.breakers["a"]) is State.open and breaker_gauge("a") == 2
    assert state_of(driver.breakers["b"]) is State.closed and breaker_gauge("b") == 0
    assert any("abandoned" in r.getMessage() and abandoned == getattr(r, "upstream_order", None) for r in caplog.records)
    described = {entry["name"]: entry["breaker"] for entry in driver.describe()}
    assert described["a"]["state"] == "open" and "unreachable" in str(described["a"]["last_error"])
    assert described["b"] == {"state": "closed", "consecutive_failures": 0}
    await driver.check()  # ready: the default route still has an upstream that answers

    # While the breaker is open, a new order goes straight to the second: no failed run.
    second = await new_order(db, ["skipped.example.test"])
    assert await until_issued(worker, second, 1) == 0
    assert (await upstream_order_row(db, second)).upstream == "b"  # type: ignore[union-attr]
    assert failovers() == before + 2 and b.issued_count() == 2

    # The first comes back, having forgotten its accounts. After the cool-down the readiness
    # check is the breaker's probe: it registers again, the breaker closes.
    a.start()
    driver.breakers["a"].cool_down_seconds = 0.0
    assert state_of(driver.breakers["a"]) is State.half_open and breaker_gauge("a") == 1
    await driver.check()
    assert state_of(driver.breakers["a"]) is State.closed and breaker_gauge("a") == 0
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
    assert state_of(driver.breakers["a"]) is State.closed
    assert a.issued_count() == 1 and b.issued_count() == 1


class RefusedAtFinalize(httpx.AsyncBaseTransport):
    """The first upstream's transport: the Pebble goes down just as finalize is about to be
    sent, so that request's connection is refused (and every later one)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, pebble: Pebble) -> None:
        self.inner = inner
        self.pebble = pebble

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/finalize-order/"):
            self.pebble.stop()
        if self.pebble.process is not None and self.pebble.process.poll() is not None:
            raise httpx.ConnectError(f"cannot connect to {request.url.host}:{request.url.port}", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_finalize_that_never_left_does_not_pin_the_order(
    pebbles: tuple[Pebble, Pebble], failover_driver: AcmeDriver, db: Database
) -> None:
    a, b = pebbles
    driver = failover_driver
    first = driver.upstreams["a"]
    assert isinstance(first, AcmeUpstream)
    first.client.transport = RefusedAtFinalize(first.client.transport, a)
    worker = IssueWorker(db, driver)
    order_id = await new_order(db, ["unsent.example.test"])
    with pytest.raises(UpstreamUnavailable):
        await run_job(worker, order_id)
    assert a.process is not None and a.process.poll() is not None  # down at finalize
    row = await upstream_order_row(db, order_id)
    # Recorded "finalizing" before the attempt, then undone: the request never left.
    assert row is not None and row.upstream == "a" and row.state == "pending" and row.finalized_at is None
    assert await until_issued(worker, order_id, FAILURES_TO_OPEN) == FAILURES_TO_OPEN - 2
    row = await upstream_order_row(db, order_id)
    assert row is not None and row.upstream == "b" and row.orders_created == 2
    assert a.issued_count() == 0 and b.issued_count() == 1 and await certificate_count(db, order_id) == 1


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
    assert state_of(driver.breakers["a"]) is State.open
    row = await upstream_order_row(db, order_id)
    assert row is not None and row.upstream == "a" and row.state == "finalizing" and row.orders_created == 1
    assert (await order_row(db, order_id)).status == "processing"
    assert await certificate_count(db, order_id) == 0
    assert b.issued_count() == 0 and failovers() == before


LOAD_ORDERS = 66
LOAD_JOBS = 6  # concurrent jobs, as several signer workers would run
KILL_AFTER = 20  # orders issued before the first Pebble is killed
RESTART_AFTER = 20  # orders the second issues before the first comes back


async def test_load_with_the_first_killed_midway_every_order_completes_exactly_once(
    pebbles: tuple[Pebble, Pebble], failover_driver: AcmeDriver, db: Database
) -> None:
    a, b = pebbles
    driver = failover_driver
    worker = IssueWorker(db, driver)
    await driver.check()
    a_intermediate = a.intermediate()
    order_ids = [await new_order(db, [f"load{i}.example.test"]) for i in range(LOAD_ORDERS)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for order_id in order_ids:
        queue.put_nowait(order_id)
    done: list[str] = []
    before = failovers()
    b_at_kill: list[int] = []

    async def job_runner() -> None:
        # A job that raises is nak'ed and comes back later: here, at the end of the queue.
        while len(done) < LOAD_ORDERS:
            try:
                order_id = queue.get_nowait()
            except asyncio.QueueEmpty:
                await asyncio.sleep(0.02)
                continue
            try:
                await run_job(worker, order_id)
            except UpstreamUnavailable:
                await asyncio.sleep(0.02)
                queue.put_nowait(order_id)
                continue
            done.append(order_id)

    async def chaos() -> None:
        while len(done) < KILL_AFTER:
            await asyncio.sleep(0.005)
        assert a.process is not None
        a.process.kill()  # SIGKILL, whatever it was doing
        a.process.wait()
        b_at_kill.append(b.issued_count())
        while b.issued_count() - b_at_kill[0] < RESTART_AFTER:
            await asyncio.sleep(0.02)
        a.start()  # back, having forgotten everything
        driver.breakers["a"].cool_down_seconds = 0.5  # the test's patience, not the product's

    await asyncio.wait_for(asyncio.gather(chaos(), *(job_runner() for _ in range(LOAD_JOBS))), timeout=120)

    assert sorted(done) == sorted(order_ids)
    valid, lost = [], []
    for order_id in order_ids:
        order = await order_row(db, order_id)
        row = await upstream_order_row(db, order_id)
        assert row is not None
        if order.status == "valid":
            valid.append((order_id, row.upstream))
            assert await certificate_count(db, order_id) == 1
        else:
            # The only way an order may fail: finalized at the first when it was killed. Moving it
            # could issue twice; the restarted Pebble no longer knows it, so acme-ra says so.
            assert order.status == "invalid" and row.upstream == "a" and row.finalized_at is not None, order.error
            assert "acme-ra does not order again" in (order.error or {}).get("detail", ""), order.error
            assert await certificate_count(db, order_id) == 0
            lost.append(order_id)
    # Counted at both Pebbles: every certificate the second issued is in the database (and
    # known to its management API); the first issued those in the database plus at most one
    # for each order lost in the kill.
    a_intermediates = {a_intermediate.subject, a.intermediate().subject}  # a restarted Pebble has a new CA
    b_intermediate = b.intermediate().subject
    from_a, from_b = 0, 0
    for order_id, upstream in valid:
        certificate = await certificate_of(db, order_id)
        leaf = x509.load_pem_x509_certificate(certificate.chain_pem.encode())
        if upstream == "b":
            assert leaf.issuer == b_intermediate
            assert b.cert_status(certificate.serial)["Status"] == "Valid"
            from_b += 1
        else:
            assert leaf.issuer in a_intermediates
            from_a += 1
    # Pebble's log (where issued_count reads) may trail its answers by a moment.
    await wait_until(_async(lambda: b.issued_count() >= from_b and a.issued_count() >= from_a), timeout=5)
    await asyncio.sleep(0.2)
    assert b.issued_count() == from_b >= RESTART_AFTER
    assert from_a <= a.issued_count() <= from_a + len(lost)
    assert failovers() > before
    # The first is back: its breaker closes (by the probe, once the cool-down is over, if no
    # job probed already) and new orders go to it again.
    await asyncio.sleep(driver.breakers["a"].cool_down_seconds)
    await driver.check()
    assert state_of(driver.breakers["a"]) is State.closed
    last = await new_order(db, ["after-load.example.test"])
    assert await until_issued(worker, last, 1) == 0
    assert (await upstream_order_row(db, last)).upstream == "a"  # type: ignore[union-attr]
    await wait_until(_async(lambda: a.issued_count() >= from_a + 1), timeout=5)
    print(f"load: {len(valid)} issued ({from_a} by a, {from_b} by b), {len(lost)} lost at the kill, a issued {a.issued_count()}, "
          f"{failovers() - before:.0f} failovers")
