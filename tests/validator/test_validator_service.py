"""End to end: a real nats-server (JetStream), ``python -m acme_ra_validator`` as a process, a job
published on the bus, the outcome in the database, the event, the metrics, a clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest

from acme_ra import bus
from acme_ra.db.engine import Database

from .conftest import LAB_ALLOW_NETWORKS, HttpLab, unused_port
from .rows import insert_pending_order, snapshot

pytestmark = pytest.mark.integration

NATS_SERVER = Path(sys.executable).parent / "nats-server"
PATH = "/.well-known/acme-challenge/"


@dataclass
class Nats:
    url: str
    port: int
    store: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(NATS_SERVER), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@dataclass
class Service:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await client.get(self.base_url + path)

    async def wait_ready(self, expected: int = 200, timeout: float = 20.0) -> httpx.Response:
        for _ in range(int(timeout * 10)):
            if self.process.poll() is not None:
                pytest.fail("validator exited:\n" + self.log_path.read_text())
            try:
                response = await self.get("/readyz")
                if response.status_code == expected:
                    return response
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        pytest.fail(f"/readyz never answered {expected}:\n" + self.log_path.read_text())

    def terminate(self) -> int:
        """SIGTERM; uvicorn shuts down gracefully, then re-raises the signal for its exit status."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        assert "Application shutdown complete" in self.log_path.read_text()
        return code


@pytest.fixture
def nats_lab(tmp_path: Path) -> Iterator[Nats]:
    """A JetStream nats-server on a free port, not started yet."""
    if not NATS_SERVER.exists():
        pytest.skip("nats-server is not installed in the venv")
    port = unused_port()
    lab = Nats(f"nats://127.0.0.1:{port}", port, tmp_path / "nats")
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
async def service(tmp_path: Path, nats_lab: Nats, database_url: str, http_lab: HttpLab) -> AsyncIterator[Service]:
    """``python -m acme_ra_validator`` (running, not necessarily ready)."""
    listen = f"127.0.0.1:{unused_port()}"
    env = {
        **os.environ,
        "ACME_RA_NATS_URL": nats_lab.url,
        "ACME_RA_DATABASE_URL": database_url,
        "ACME_RA_VALIDATOR_LISTEN": listen,
        "ACME_RA_VALIDATION_HTTP_PORT": str(http_lab.port),
        "ACME_RA_VALIDATION_ALLOW_NETWORKS": LAB_ALLOW_NETWORKS,  # http_lab answers on loopback
        "ACME_RA_DNS_RESOLVERS": "",
        "ACME_RA_STATE_DIR": str(tmp_path),
    }
    log_path = tmp_path / "validator.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the fixture polls its readiness
            [sys.executable, "-m", "acme_ra_validator"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        yield Service(f"http://{listen}", process, log_path)
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(30)


async def test_job_on_the_bus_is_validated(
    service: Service, nats_lab: Nats, database_url: str, http_lab: HttpLab
) -> None:
    nats_lab.start()
    await service.wait_ready()
    db = Database(database_url)
    nc = await nats.connect(nats_lab.url)
    try:
        events = await nc.subscribe("acme.events.validated")
        rows = await insert_pending_order(db, "myhost.localhost")
        http_lab.routes[PATH + rows.token] = (200, {}, rows.key_authorization.encode())
        job = bus.ValidateJob(challenge_id=rows.challenge_id, order_id=rows.order_id)
        await bus.publish_job(nc.jetstream(), bus.SUBJECT_VALIDATE, job, f"validate-{rows.challenge_id}")

        event = bus.Event.model_validate_json((await events.next_msg(timeout=20)).data)
        assert (event.challenge_id, event.order_id, event.status) == (rows.challenge_id, rows.order_id, "valid")
        after = await snapshot(db, rows)
        assert after["challenge"]["status"] == "valid" and after["order"]["status"] == "ready"
        # The outcome as committed travels with the event (the frontend answers with it: waiting.py).
        assert event.validated is not None and event.error is None
        assert event.validated.replace(tzinfo=None) == after["challenge"]["validated"].replace(tzinfo=None)
    finally:
        await nc.close()
        await db.dispose()

    assert (await service.get("/healthz")).json() == {"status": "ok"}
    assert (await service.get("/readyz")).json()["checks"] == {"database": "ok", "nats": "ok", "consumer": "ok"}
    page = (await service.get("/metrics")).text
    assert 'acme_ra_validations_total{result="valid",type="http-01"} 1.0' in page
    assert "acme_ra_validation_duration_seconds_bucket" in page
    assert "acme_ra_validator_jobs_in_flight 0.0" in page
    assert rows.challenge_id not in page
    assert service.terminate() in (0, -signal.SIGTERM)


async def test_waits_for_nats_and_reports_it(service: Service, nats_lab: Nats) -> None:
    not_ready = await service.wait_ready(503)
    assert (await service.get("/healthz")).status_code == 200
    assert not_ready.json()["checks"]["nats"] == "connecting"

    nats_lab.start()
    await service.wait_ready(200)

    nats_lab.stop()
    gone = await service.wait_ready(503)
    assert gone.json()["checks"]["nats"] == "disconnected"
    assert service.terminate() in (0, -signal.SIGTERM)


async def test_sigterm_while_waiting_for_nats(service: Service) -> None:
    await service.wait_ready(503)
    assert service.terminate() in (0, -signal.SIGTERM)
