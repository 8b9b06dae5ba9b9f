"""Never twice: whatever happens to a job, an acme-ra order gets at most one upstream certificate.

A job is "killed" at each step of the upstream walk by a transport that raises ``Killed`` (a
BaseException, like the process dying: nothing after it runs but ``finally`` blocks); the job
then runs again, as a redelivery or a restarted signer would, and must finish with exactly one
certificate in the database and exactly one issued by Pebble.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import update

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import UpstreamOrder, utcnow
from acme_ra_signer.upstream.acme_client import tls_context
from acme_ra_signer.upstream.base import UpstreamUnavailable
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.upstream.journal import UpstreamBusy
from acme_ra_signer.worker import IssueWorker

from .conftest import (
    TEST_LEASE_SECONDS,
    certificate_count,
    certificate_of,
    make_acme_driver,
    new_order,
    order_row,
    run_job,
    upstream_order_row,
)
from .pebble import Pebble


class Killed(BaseException):
    """The signer died here."""


class KillSwitch(httpx.AsyncBaseTransport):
    """Forwards to Pebble; the first request matching ``when`` kills the job, before it is
    sent or after its response arrived (the upstream acted, the signer never learnt it)."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        when: Callable[[httpx.Request], bool],
        after: bool,
        finalize_retry_after: str | None = None,
    ) -> None:
        self.inner = inner
        self.when = when
        self.after = after
        # A Retry-After (seconds) on finalize's answer: the signer then waits; a wait longer than a
        # third of the lease renews it, recording the "processing" noted before.
        self.finalize_retry_after = finalize_retry_after
        self.armed = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fire = self.armed and request.method == "POST" and self.when(request)
        if fire and not self.after:
            self.armed = False
            raise Killed(request.url.path)
        response = await self.inner.handle_async_request(request)
        if fire:
            await response.aread()
            self.armed = False
            raise Killed(request.url.path)
        if self.finalize_retry_after is not None and request.url.path.startswith("/finalize-order/"):
            response.headers["Retry-After"] = self.finalize_retry_after
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def path_starts(prefix: str, nth: int = 1) -> Callable[[httpx.Request], bool]:
    """The ``nth`` request whose path starts with ``prefix``."""
    seen = 0

    def when(request: httpx.Request) -> bool:
        nonlocal seen
        if request.url.path.startswith(prefix):
            seen += 1
        return seen == nth and request.url.path.startswith(prefix)

    return when


# Kill points, in Pebble's URL space: (a fresh "which request" predicate, after its response?). Every state of
# UpstreamOrderState is left behind by one of them.
KILL_POINTS: dict[str, tuple[Callable[[], Callable[[httpx.Request], bool]], bool]] = {
    "newOrder answered, URL not recorded": (lambda: path_starts("/order-plz"), True),
    "upstream order created and recorded": (lambda: path_starts("/authZ/"), True),
    "challenge answered": (lambda: path_starts("/chalZ/"), True),
    "finalize about to be sent": (lambda: path_starts("/finalize-order/"), False),
    "finalize taken, answer lost": (lambda: path_starts("/finalize-order/"), True),
    # The order is first fetched once finalize answered "processing" (noted, not yet written)...
    "signing (processing noted)": (lambda: path_starts("/my-order/"), True),
    # ... or after a wait for finalize's Retry-After long enough to renew the lease, which wrote it.
    "signing (processing recorded by a renewal)": (lambda: path_starts("/my-order/"), True),
    "certificate downloaded, not stored": (lambda: path_starts("/certZ/"), True),
}


# The recorded state each kill point leaves behind: together, every non-final state.
STATE_LEFT = {
    "newOrder answered, URL not recorded": "creating",
    "upstream order created and recorded": "pending",
    "challenge answered": "pending",
    "finalize about to be sent": "finalizing",
    "finalize taken, answer lost": "finalizing",
    "signing (processing noted)": "finalizing",
    "signing (processing recorded by a renewal)": "processing",
    "certificate downloaded, not stored": "valid",
}


# Kill points reached only when the upstream asks the signer to wait after finalize: the wait
# (seconds) is longer than a third of the lease (TEST_LEASE_SECONDS).
WAIT_AFTER_FINALIZE = {"signing (processing recorded by a renewal)": "1"}


def killing_driver(
    settings: Settings,
    db: Database,
    pebble: Pebble,
    when: Callable[[httpx.Request], bool],
    after: bool,
    finalize_retry_after: str | None = None,
) -> tuple[AcmeDriver, KillSwitch]:
    switch = KillSwitch(
        httpx.AsyncHTTPTransport(verify=tls_context(str(pebble.ca_bundle))), when, after, finalize_retry_after
    )
    return make_acme_driver(settings, db, transport=switch), switch


@pytest.mark.parametrize("point", list(KILL_POINTS))
async def test_killed_mid_issuance_then_resumed_gives_one_certificate(
    point: str, pebble: Pebble, settings: Settings, db: Database
) -> None:
    when, after = KILL_POINTS[point]
    dying, switch = killing_driver(settings, db, pebble, when(), after, WAIT_AFTER_FINALIZE.get(point))
    order_id = await new_order(db, ["resume.example.test", "www.resume.example.test"])
    try:
        with pytest.raises(Killed):
            await run_job(IssueWorker(db, dying), order_id)
    finally:
        await dying.close()
    assert not switch.armed, "the kill point was never reached"
    assert (await order_row(db, order_id)).status == "processing"
    left = await upstream_order_row(db, order_id)
    assert left is not None and left.state == STATE_LEFT[point]

    restarted = make_acme_driver(settings, db)
    try:
        msg = await run_job(IssueWorker(db, restarted), order_id)
        assert msg.acks == 1
        # The job delivered once more (e.g. re-published by the reconciler) changes nothing.
        await run_job(IssueWorker(db, restarted), order_id)
    finally:
        await restarted.close()

    assert (await order_row(db, order_id)).status == "valid"
    assert await certificate_count(db, order_id) == 1
    assert pebble.issued_count() == 1
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.state == "valid"
    # Only an order whose URL was never recorded (and so never finalized) is ever replaced.
    assert record.orders_created == (2 if point == "newOrder answered, URL not recorded" else 1)
    certificate = await certificate_of(db, order_id)
    assert pebble.cert_status(certificate.serial)["Status"] == "Valid"


async def test_a_dead_signers_lease_is_taken_over_after_it_expires(
    pebble: Pebble, settings: Settings, db: Database
) -> None:
    when, after = KILL_POINTS["upstream order created and recorded"]
    dying, _ = killing_driver(settings, db, pebble, when(), after)
    order_id = await new_order(db, ["lease.example.test"])
    try:
        with pytest.raises(Killed):
            await run_job(IssueWorker(db, dying), order_id)
    finally:
        await dying.close()
    # A killed process releases nothing: its lease stays until it expires.
    async with db.transaction() as session:
        await session.execute(
            update(UpstreamOrder)
            .where(UpstreamOrder.order_id == order_id)
            .values(lease_owner="dead-signer", lease_until=utcnow() + dt.timedelta(seconds=TEST_LEASE_SECONDS))
        )
    restarted = make_acme_driver(settings, db)
    try:
        with pytest.raises(UpstreamBusy):
            await run_job(IssueWorker(db, restarted), order_id)
        await asyncio.sleep(TEST_LEASE_SECONDS + 0.2)
        await run_job(IssueWorker(db, restarted), order_id)
    finally:
        await restarted.close()
    assert (await order_row(db, order_id)).status == "valid"
    assert pebble.issued_count() == 1


async def test_the_same_job_on_two_signers_at_once_gives_one_certificate(
    pebble: Pebble, settings: Settings, db: Database
) -> None:
    first, second = make_acme_driver(settings, db), make_acme_driver(settings, db)
    order_ids = [await new_order(db, [f"twice-{n}.example.test"]) for n in range(5)]
    try:
        workers = [IssueWorker(db, first), IssueWorker(db, second)]
        for order_id in order_ids:
            results = await asyncio.gather(*(run_job(worker, order_id) for worker in workers), return_exceptions=True)
            for result in results:
                assert not isinstance(result, BaseException) or isinstance(result, UpstreamBusy), result
            if any(isinstance(result, UpstreamBusy) for result in results):
                # The busy delivery is nak'ed and comes back: it finds the order valid.
                await run_job(workers[1], order_id)
    finally:
        await first.close()
        await second.close()
    for order_id in order_ids:
        assert (await order_row(db, order_id)).status == "valid"
        assert await certificate_count(db, order_id) == 1
        record = await upstream_order_row(db, order_id)
        assert record is not None and record.orders_created == 1
    assert pebble.issued_count() == len(order_ids)


async def test_upstream_down_the_job_is_retried_then_valid(
    pebble: Pebble, settings: Settings, db: Database, driver: AcmeDriver
) -> None:
    # The account exists; then the upstream goes away.
    await driver.check()
    pebble.stop()
    order_id = await new_order(db, ["down.example.test"])
    worker = IssueWorker(db, driver)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable, match="unreachable"):
            await run_job(worker, order_id)
    assert (await order_row(db, order_id)).status == "processing"
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.lease_owner is None and record.finalized_at is None

    pebble.start()  # a fresh Pebble: it lost the account too
    await run_job(worker, order_id)
    assert (await order_row(db, order_id)).status == "valid"
    assert pebble.issued_count() == 1


async def test_upstream_lost_the_order_before_finalize_a_new_one_is_made(
    pebble: Pebble, settings: Settings, db: Database
) -> None:
    when, after = KILL_POINTS["upstream order created and recorded"]
    dying, _ = killing_driver(settings, db, pebble, when(), after)
    order_id = await new_order(db, ["lost.example.test"])
    try:
        with pytest.raises(Killed):
            await run_job(IssueWorker(db, dying), order_id)
    finally:
        await dying.close()
    pebble.restart()  # the order (never finalized) and the account are gone
    driver = make_acme_driver(settings, db)
    try:
        await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    assert (await order_row(db, order_id)).status == "valid"
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.orders_created == 2
    assert pebble.issued_count() == 1


async def test_upstream_lost_a_finalized_order_no_second_certificate(
    pebble: Pebble, settings: Settings, db: Database
) -> None:
    when, after = KILL_POINTS["finalize taken, answer lost"]
    dying, _ = killing_driver(settings, db, pebble, when(), after)
    order_id = await new_order(db, ["finalized.example.test"])
    try:
        with pytest.raises(Killed):
            await run_job(IssueWorker(db, dying), order_id)
    finally:
        await dying.close()
    await asyncio.sleep(0.2)  # let Pebble sign
    issued_before_restart = pebble.issued_count()
    pebble.restart()  # Pebble forgets the finalized order and its certificate
    driver = make_acme_driver(settings, db)
    try:
        msg = await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    assert msg.acks == 1
    order = await order_row(db, order_id)
    assert order.status == "invalid"
    assert order.error is not None and order.error["type"] == "serverInternal"
    assert "after it was finalized" in order.error["detail"]
    assert pebble.issued_count() == issued_before_restart <= 1
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.orders_created == 1
