"""The issue job handler against a real, migrated SQLite database."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from acme_ra import bus
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import Certificate, Order
from acme_ra_signer.upstream import (
    IssuedChain,
    IssueRequest,
    UpstreamDriver,
    UpstreamUnavailable,
    make_driver,
)
from acme_ra_signer.upstream.lab import LabDriver
from acme_ra_signer.worker import IssueWorker

from .conftest import insert_order, make_csr, verify_chain

NAMES = ["www.example.test", "192.0.2.10"]


def issued_total() -> float:
    return REGISTRY.get_sample_value("acme_ra_certificates_issued_total") or 0.0


class FakeMsg:
    """Records what the handler does with the JetStream message."""

    def __init__(self) -> None:
        self.acks = 0
        self.in_progress_calls = 0

    async def ack(self) -> None:
        self.acks += 1

    async def in_progress(self) -> None:
        self.in_progress_calls += 1


class FakeJetStream:
    """Captures published events (a NATS client's or JetStream's ``publish``)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, subject: str, payload: bytes, **_: Any) -> None:
        self.published.append((subject, json.loads(payload)))


class ScriptedDriver(UpstreamDriver):
    """Fails or stalls as told, then delegates to a real lab driver."""

    def __init__(self, lab: LabDriver, error: Exception | None = None, delay: float = 0.0) -> None:
        self.lab = lab
        self.error = error
        self.delay = delay
        self.calls = 0

    async def issue(self, request: IssueRequest) -> IssuedChain:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return await self.lab.issue(request)

    async def revoke(self, cert_der: bytes, reason: int, order_id: str | None = None) -> None:
        await self.lab.revoke(cert_der, reason)

    async def check(self) -> None:
        return None


@pytest.fixture
def lab(settings: Settings) -> LabDriver:
    driver = make_driver(settings)
    assert isinstance(driver, LabDriver)
    return driver


async def load_order(db: Database, order_id: str) -> Order:
    async with db.sessions() as session:
        order = await session.get(Order, order_id)
        assert order is not None
        return order


async def certificates_of(db: Database, order_id: str) -> list[Certificate]:
    async with db.sessions() as session:
        rows = await session.execute(select(Certificate).where(Certificate.order_id == order_id))
        return list(rows.scalars().all())


async def test_processing_order_becomes_valid_with_a_certificate(db: Database, lab: LabDriver) -> None:
    order_id = await insert_order(db, NAMES, make_csr(NAMES))
    js = FakeJetStream()
    msg = FakeMsg()
    issued_before = issued_total()

    worker = IssueWorker(db, lab, js)  # type: ignore[arg-type]
    await worker.handle(bus.IssueJob(order_id=order_id), msg)

    order = await load_order(db, order_id)
    [certificate] = await certificates_of(db, order_id)
    assert order.status == "valid" and order.certificate_id == certificate.id and order.error is None
    assert certificate.account_id == order.account_id
    for name in NAMES:
        verify_chain(certificate.chain_pem, lab.ca.root, name)
    assert certificate.serial == certificate.serial.lower()
    assert certificate.not_before.tzinfo is not None and certificate.not_after > certificate.not_before
    assert msg.acks == 1
    [(subject, event)] = js.published
    assert subject == "acme.events.issued"
    assert event == {"v": 1, "kind": "issued", "order_id": order_id, "challenge_id": None, "status": "valid",
                     "validated": None, "error": None, "certificate_id": certificate.id}
    assert issued_total() == issued_before + 1


async def test_the_same_job_twice_stores_one_certificate(db: Database, lab: LabDriver) -> None:
    order_id = await insert_order(db, NAMES, make_csr(NAMES))
    driver = ScriptedDriver(lab)
    worker = IssueWorker(db, driver)
    first, second = FakeMsg(), FakeMsg()

    await worker.handle(bus.IssueJob(order_id=order_id), first)
    await worker.handle(bus.IssueJob(order_id=order_id), second)

    assert len(await certificates_of(db, order_id)) == 1
    assert (first.acks, second.acks) == (1, 1)
    assert driver.calls == 1  # the duplicate never reaches the upstream


async def test_concurrent_deliveries_store_one_certificate(db: Database, lab: LabDriver) -> None:
    order_id = await insert_order(db, NAMES, make_csr(NAMES))
    worker = IssueWorker(db, ScriptedDriver(lab, delay=0.05))
    msgs = [FakeMsg() for _ in range(3)]

    await asyncio.gather(*(worker.handle(bus.IssueJob(order_id=order_id), m) for m in msgs))

    [certificate] = await certificates_of(db, order_id)
    assert (await load_order(db, order_id)).certificate_id == certificate.id
    assert [m.acks for m in msgs] == [1, 1, 1]
    async with db.sessions() as session:
        total = await session.scalar(select(func.count()).select_from(Certificate))
    assert total == 1


async def test_rejected_csr_makes_the_order_invalid(db: Database, lab: LabDriver) -> None:
    order_id = await insert_order(db, NAMES, b"\x30\x00 not a CSR")
    js = FakeJetStream()
    msg = FakeMsg()

    worker = IssueWorker(db, lab, js)  # type: ignore[arg-type]
    await worker.handle(bus.IssueJob(order_id=order_id), msg)

    order = await load_order(db, order_id)
    assert order.status == "invalid" and order.certificate_id is None
    assert order.error is not None and order.error["type"] == "badCSR" and order.error["detail"]
    assert await certificates_of(db, order_id) == []
    assert msg.acks == 1
    [(subject, event)] = js.published
    assert subject == "acme.events.failed"
    assert event["status"] == "invalid" and event["error"] == order.error  # the problem as stored


async def test_upstream_unavailable_raises_without_ack(db: Database, lab: LabDriver) -> None:
    order_id = await insert_order(db, NAMES, make_csr(NAMES))
    driver = ScriptedDriver(lab, error=UpstreamUnavailable("upstream is down"))
    msg = FakeMsg()

    with pytest.raises(UpstreamUnavailable):
        await IssueWorker(db, driver).handle(bus.IssueJob(order_id=order_id), msg)

    assert msg.acks == 0
    assert (await load_order(db, order_id)).status == "processing"
    # The redelivery then succeeds.
    driver.error = None
    await IssueWorker(db, driver).handle(bus.IssueJob(order_id=order_id), msg)
    assert (await load_order(db, order_id)).status == "valid" and msg.acks == 1


async def test_unexpected_errors_also_raise_for_redelivery(db: Database, lab: LabDriver) -> None:
    order_id = await insert_order(db, NAMES, make_csr(NAMES))
    msg = FakeMsg()

    with pytest.raises(RuntimeError):
        await IssueWorker(db, ScriptedDriver(lab, error=RuntimeError("bug"))).handle(
            bus.IssueJob(order_id=order_id), msg
        )
    assert msg.acks == 0 and (await load_order(db, order_id)).status == "processing"


@pytest.mark.parametrize("status", ["ready", "valid", "invalid"])
async def test_orders_not_processing_are_only_acked(db: Database, lab: LabDriver, status: str) -> None:
    order_id = await insert_order(db, NAMES, make_csr(NAMES), status=status)
    driver = ScriptedDriver(lab)
    msg = FakeMsg()

    await IssueWorker(db, driver).handle(bus.IssueJob(order_id=order_id), msg)

    assert msg.acks == 1 and driver.calls == 0
    assert (await load_order(db, order_id)).status == status


async def test_unknown_order_is_acked(db: Database, lab: LabDriver) -> None:
    msg = FakeMsg()
    await IssueWorker(db, lab).handle(bus.IssueJob(order_id="no-such-order"), msg)
    assert msg.acks == 1


async def test_processing_order_without_csr_fails(db: Database, lab: LabDriver) -> None:
    order_id = await insert_order(db, NAMES, None)
    msg = FakeMsg()

    await IssueWorker(db, lab).handle(bus.IssueJob(order_id=order_id), msg)

    order = await load_order(db, order_id)
    assert order.status == "invalid" and order.error is not None
    assert order.error["type"] == "serverInternal" and msg.acks == 1


async def test_one_log_line_per_job_without_keys(
    db: Database, lab: LabDriver, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = await insert_order(db, NAMES, make_csr(NAMES))
    with caplog.at_level("INFO", logger="acme_ra_signer.worker"):
        await IssueWorker(db, lab).handle(bus.IssueJob(order_id=order_id), FakeMsg())

    [record] = [r for r in caplog.records if r.name == "acme_ra_signer.worker"]
    assert record.order_id == order_id  # type: ignore[attr-defined]
    assert record.outcome == "issued"  # type: ignore[attr-defined]
    assert record.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"  # type: ignore[attr-defined]
    assert isinstance(record.duration_ms, float)  # type: ignore[attr-defined]
    assert "PRIVATE" not in record.getMessage()
