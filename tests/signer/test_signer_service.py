"""The signer app: health, readiness and metrics, and the issue consumer against a private
JetStream-enabled nats-server (skipped when the binary is missing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from acme_ra import bus
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import Certificate, Order
from acme_ra_signer.app import create_app
from tests.support.nats import NatsServer
from tests.support.nats import nats_server as running_nats_server

from .conftest import insert_order, make_csr


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats_server(tmp_path / "jetstream") as server:
        yield server


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://signer")


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_health_and_metrics_without_dependencies(settings: Settings) -> None:
    app = create_app(settings)  # lifespan not run: nothing is connected
    async with client(app) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["failed"] == {"signer": "starting"}
        assert (await http.get("/upstreams")).json() == {"upstreams": []}
        metrics = await http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "acme_ra_certificates_issued_total",
        "acme_ra_upstream_requests_total",
        "acme_ra_upstream_request_duration_seconds",
        "acme_ra_signer_jobs_in_flight",
    ):
        assert name in metrics.text


async def test_consumer_issues_a_published_job_once(
    settings: Settings, db_url: str, nats_server: NatsServer
) -> None:
    app = create_app(settings.model_copy(update={"nats_url": nats_server.url}))
    db = Database(db_url)
    nc = await bus.connect(nats_server.url, "signer-test")
    try:
        async with app.router.lifespan_context(app), client(app) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert (settings.lab_ca_dir / "root.pem").is_file()

            names = ["svc.example.test"]
            order_id = await insert_order(db, names, make_csr(names))
            js = nc.jetstream()
            job = bus.IssueJob(order_id=order_id)
            await bus.publish_job(js, bus.SUBJECT_ISSUE, job, f"issue-{order_id}")

            async def is_valid() -> bool:
                async with db.sessions() as session:
                    order = await session.get(Order, order_id)
                    return order is not None and order.status == "valid"

            await wait_for(is_valid)
            event = await js.get_last_msg(bus.EVENTS_STREAM, "acme.events.issued")
            assert event.data is not None
            assert bus.Event.model_validate_json(event.data).order_id == order_id

            # A re-published job (e.g. by the reconciler, outside the dedup window) is only acked.
            await bus.publish_job(js, bus.SUBJECT_ISSUE, job, f"issue-{order_id}-again")

            async def queue_empty() -> bool:
                info = await js.consumer_info(bus.JOBS_STREAM, bus.DURABLE_SIGNER)
                return bool(info.num_pending == 0 and info.num_ack_pending == 0)

            await wait_for(queue_empty)
            async with db.sessions() as session:
                count = await session.scalar(
                    select(func.count()).select_from(Certificate).where(Certificate.order_id == order_id)
                )
            assert count == 1
            metrics = (await http.get("/metrics")).text
            assert 'acme_ra_upstream_requests_total{operation="issue",outcome="ok"}' in metrics
        assert app.state.runtime is None
    finally:
        await nc.close()
        await db.dispose()


async def test_readiness_names_nats_when_it_goes_away(
    settings: Settings, db_url: str, nats_server: NatsServer
) -> None:
    app = create_app(settings.model_copy(update={"nats_url": nats_server.url}))
    async with app.router.lifespan_context(app), client(app) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and "upstreams" not in ready.json()  # readiness only
        described = await http.get("/upstreams")  # the lab CA: no ACME upstream to describe
        assert described.status_code == 200 and described.json() == {"upstreams": []}
        await asyncio.to_thread(nats_server.stop)

        async def nats_reported() -> bool:
            ready = await http.get("/readyz")
            return ready.status_code == 503 and "nats" in ready.json()["failed"]

        await wait_for(nats_reported)


async def test_revoke_request_is_answered_over_nats(
    settings: Settings, db_url: str, nats_server: NatsServer
) -> None:
    app = create_app(settings.model_copy(update={"nats_url": nats_server.url}))
    db = Database(db_url)
    nc = await bus.connect(nats_server.url, "frontend-test")
    try:
        async with app.router.lifespan_context(app):
            names = ["revoke.example.test"]
            order_id = await insert_order(db, names, make_csr(names))
            await bus.publish_job(nc.jetstream(), bus.SUBJECT_ISSUE, bus.IssueJob(order_id=order_id), f"issue-{order_id}")

            async def issued() -> bool:
                async with db.sessions() as session:
                    order = await session.get(Order, order_id)
                    return order is not None and order.certificate_id is not None

            await wait_for(issued)
            async with db.sessions() as session:
                order = await session.get(Order, order_id)
                assert order is not None and order.certificate_id is not None
                certificate_id = order.certificate_id
            request = bus.RevokeRequest(certificate_id=certificate_id, reason=1)
            message = await nc.request(bus.SUBJECT_REVOKE_RPC, request.model_dump_json().encode(), timeout=10)
            assert bus.RevokeReply.model_validate_json(message.data).outcome == "revoked"
            message = await nc.request(bus.SUBJECT_REVOKE_RPC, b"not json", timeout=10)
            reply = bus.RevokeReply.model_validate_json(message.data)
            assert reply.outcome == "rejected" and reply.problem is not None and reply.problem["type"] == "malformed"
            async with db.sessions() as session:
                certificate = await session.get(Certificate, certificate_id)
                assert certificate is not None and certificate.revocation_reason == 1
    finally:
        await nc.close()
        await db.dispose()
