"""The bus trusts no one: on the topology ``make dev`` runs, a client without credentials cannot
connect, and each service's user may do its own job only (acme_ra.natsauth; docs/security.md,
"Bus permissions"). Every refusal is nats-server's own (a permissions violation), and nothing
happened: the streams hold no new message, the certificate is not revoked, no reply came.

A real certificate is issued first (certbot through the services, on the permissioned bus), so
that a forged revocation would have something to revoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from sqlalchemy import select

from acme_ra import bus, natsauth
from acme_ra.db.engine import Database
from acme_ra.db.models import Certificate
from tests.hostile.conftest import Timer
from tests.support import certbot
from tests.support.lab import TEST_ZONE, Lab

pytestmark = pytest.mark.integration

# How long a refusal may take to come back from nats-server (seconds).
REFUSAL_TIMEOUT_SECONDS = 5.0
# How long a request that should get no answer is waited for (seconds).
NO_ANSWER_SECONDS = 1.5
PERMISSIONS_VIOLATION = "permissions violation"


@dataclass
class Client:
    """A NATS connection as one user, and the errors nats-server sent it."""

    nc: NATS
    errors: list[str] = field(default_factory=list)

    async def refused(self, what: str, subject: str) -> None:
        """nats-server said ``Permissions Violation for <what> to "<subject>"`` to this client."""
        expected = f'{what} to "{subject}"'.lower()
        try:
            async with asyncio.timeout(REFUSAL_TIMEOUT_SECONDS):
                while not any(PERMISSIONS_VIOLATION in e.lower() and expected in e.lower() for e in self.errors):
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pytest.fail(f"nats-server did not refuse {expected} within {REFUSAL_TIMEOUT_SECONDS} s "
                        f"(errors it sent: {self.errors})")

    async def publish_refused(self, subject: str, payload: bytes = b"{}") -> None:
        await self.nc.publish(subject, payload, reply=self.nc.new_inbox())
        await self.nc.flush()
        await self.refused("publish", subject)

    async def subscribe_refused(self, subject: str, queue: str = "") -> None:
        await self.nc.subscribe(subject, queue=queue)
        await self.nc.flush()
        await self.refused("subscription", subject)


def nats_url(lab: Lab) -> str:
    return lab.topology.nats_url


def auth_dir(lab: Lab) -> Path:
    assert lab.topology.nats_auth_dir is not None, "make dev's nats-server runs without users"
    return lab.topology.nats_auth_dir


@contextlib.asynccontextmanager
async def connected(lab: Lab, role: str) -> AsyncIterator[Client]:
    """A connection as ``role``'s user, with the password make dev generated for it."""
    client = Client(nc=NATS())

    async def on_error(error: Exception) -> None:
        client.errors.append(str(error))

    await client.nc.connect(nats_url(lab), name=f"hostile-{role}", error_cb=on_error, allow_reconnect=False,
                            **natsauth.user_options(auth_dir(lab), role))
    try:
        yield client
    finally:
        await client.nc.close()


@dataclass(frozen=True)
class BusState:
    jobs_last_seq: int
    events_last_seq: int
    consumers: dict[str, int]  # durable -> delivered stream sequence


async def bus_state(lab: Lab) -> BusState:
    """What the streams hold, read as the operator (no service may read all of it)."""
    async with connected(lab, natsauth.OPERATOR) as operator:
        js = operator.nc.jetstream()
        jobs = await js.stream_info(bus.JOBS_STREAM)
        events = await js.stream_info(bus.EVENTS_STREAM)
        consumers = {}
        for durable in (bus.DURABLE_VALIDATOR, bus.DURABLE_SIGNER):
            info = await js.consumer_info(bus.JOBS_STREAM, durable)
            consumers[durable] = info.delivered.stream_seq if info.delivered else 0
    return BusState(jobs.state.last_seq, events.state.last_seq, consumers)


@pytest.fixture(scope="module")
async def certificate(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The id of a certificate issued through the services (and so through the permissioned bus)."""
    name = f"bus.{TEST_ZONE}"
    run = await asyncio.to_thread(certbot.certonly, lab, [name], "http-01", tmp_path_factory.mktemp("certbot"))
    assert run.returncode == 0, f"{run.describe()}\n{lab.logs()}"
    serial = format(run.chain()[0].serial_number, "x")
    db = Database(lab.topology.settings.effective_database_url)
    try:
        async with db.transaction() as session:
            rows = (await session.execute(select(Certificate))).scalars().all()
    finally:
        await db.dispose()
    found = [row.id for row in rows if row.serial.lower().lstrip("0") == serial.lstrip("0")]
    assert len(found) == 1, (serial, [row.serial for row in rows])
    return found[0]


async def revoked_at(lab: Lab, certificate_id: str) -> Any:
    db = Database(lab.topology.settings.effective_database_url)
    try:
        async with db.transaction() as session:
            row = await session.get(Certificate, certificate_id)
            assert row is not None
            return row.revoked_at
    finally:
        await db.dispose()


def assert_services_up(lab: Lab) -> None:
    """The frontend answers its directory, the validator and signer their health checks
    (conftest.assert_still_up, with an SSL context: httpx deprecates verify=<path>)."""
    context = ssl.create_default_context(cafile=str(lab.ca_bundle))
    with httpx.Client(verify=context, timeout=10) as http:
        assert http.get(lab.directory_url).status_code == 200, lab.logs()
        for port in (lab.ports.validator, lab.ports.signer):
            assert http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, lab.logs()


def revoke_request(certificate_id: str) -> bytes:
    return bus.RevokeRequest(certificate_id=certificate_id, reason=1).model_dump_json().encode()


async def connect_refused(lab: Lab, **credentials: str) -> None:
    """nats-server answers a CONNECT (the raw protocol: nats-py leaves a refused socket open)
    with an authorization violation and closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", lab.ports.nats)
    try:
        info = await reader.readline()
        assert info.startswith(b"INFO ") and b'"auth_required":true' in info, info
        connect = {"verbose": False, "pedantic": False, "name": "hostile", **credentials}
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        async with asyncio.timeout(REFUSAL_TIMEOUT_SECONDS):
            answer = await reader.readline()
            assert answer.strip() == b"-ERR 'Authorization Violation'", answer
            assert await reader.read() == b"", "the connection stayed open"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_a_client_without_credentials_or_with_a_wrong_password_cannot_connect(lab: Lab) -> None:
    with Timer() as timer:
        await connect_refused(lab)
        validators = natsauth.password_file(auth_dir(lab), "validator").read_text().strip()
        await connect_refused(lab, user="signer", **{"pass": validators})
        await connect_refused(lab, user="nobody", **{"pass": validators})
    timer.assert_quick()


async def test_the_validators_user_cannot_issue_revoke_forge_events_or_purge(lab: Lab, certificate: str) -> None:
    """The validator fetches what the internet serves: taken over, it still cannot publish an issue
    job, a revocation, another service's event, touch a stream or take the signer's jobs."""
    before = await bus_state(lab)
    async with connected(lab, "validator") as validator:
        for subject in (
            bus.SUBJECT_ISSUE,
            bus.SUBJECT_VALIDATE,
            bus.SUBJECT_REVOKE_RPC,
            "acme.events.issued",
            "acme.events.revoked",
            "acme.events.failed",
            f"$JS.API.STREAM.PURGE.{bus.JOBS_STREAM}",
            f"$JS.API.STREAM.DELETE.{bus.EVENTS_STREAM}",
            f"$JS.API.STREAM.UPDATE.{bus.JOBS_STREAM}",
            f"$JS.API.CONSUMER.DELETE.{bus.JOBS_STREAM}.{bus.DURABLE_SIGNER}",
            f"$JS.API.CONSUMER.MSG.NEXT.{bus.JOBS_STREAM}.{bus.DURABLE_SIGNER}",
            f"$JS.ACK.{bus.JOBS_STREAM}.{bus.DURABLE_SIGNER}.1.1.1.1.1",
        ):
            payload = revoke_request(certificate) if subject == bus.SUBJECT_REVOKE_RPC else b'{"order_id": "x"}'
            await validator.publish_refused(subject, payload)
        # A request through nats-py's own path: refused, so no signer ever answers it.
        with pytest.raises(nats.errors.TimeoutError):
            await validator.nc.request(bus.SUBJECT_REVOKE_RPC, revoke_request(certificate), timeout=NO_ANSWER_SECONDS)
    await asyncio.sleep(0.5)  # anything that did get through has landed by now
    assert await bus_state(lab) == before
    assert await revoked_at(lab, certificate) is None
    assert_services_up(lab)


async def test_the_frontends_user_cannot_forge_a_validation_or_an_issuance_nor_purge(lab: Lab) -> None:
    before = await bus_state(lab)
    async with connected(lab, "frontend") as frontend:
        for subject in ("acme.events.validated", "acme.events.issued", "acme.events.revoked",
                        f"$JS.API.STREAM.PURGE.{bus.JOBS_STREAM}", f"$JS.API.STREAM.DELETE.{bus.JOBS_STREAM}",
                        f"$JS.API.CONSUMER.DELETE.{bus.JOBS_STREAM}.{bus.DURABLE_VALIDATOR}",
                        f"$JS.API.CONSUMER.MSG.NEXT.{bus.JOBS_STREAM}.{bus.DURABLE_VALIDATOR}",
                        f"$JS.ACK.{bus.JOBS_STREAM}.{bus.DURABLE_VALIDATOR}.1.1.1.1.1"):
            await frontend.publish_refused(subject, b'{"kind": "validated", "challenge_id": "x", "status": "valid"}')
    await asyncio.sleep(0.5)
    assert await bus_state(lab) == before


async def test_the_signers_and_admins_users_cannot_publish_jobs_or_validations(lab: Lab) -> None:
    before = await bus_state(lab)
    async with connected(lab, "signer") as signer:
        for subject in (bus.SUBJECT_ISSUE, bus.SUBJECT_VALIDATE, "acme.events.validated", bus.SUBJECT_CAA_RPC,
                        f"$JS.API.STREAM.PURGE.{bus.JOBS_STREAM}"):
            await signer.publish_refused(subject)
    async with connected(lab, "admin") as admin:
        for subject in (bus.SUBJECT_ISSUE, bus.SUBJECT_VALIDATE, "acme.events.revoked", bus.SUBJECT_CAA_RPC,
                        f"$JS.API.STREAM.PURGE.{bus.JOBS_STREAM}", f"$JS.API.STREAM.UPDATE.{bus.JOBS_STREAM}"):
            await admin.publish_refused(subject)
    await asyncio.sleep(0.5)
    assert await bus_state(lab) == before


async def test_only_the_validator_answers_caa_rechecks_and_only_the_signer_revocations(lab: Lab) -> None:
    """Nobody else may take (and so answer) a CAA re-check or a revocation request, read another
    service's replies, or send a reply the bus did not ask it for."""
    for role in ("frontend", "signer", "admin"):
        async with connected(lab, role) as client:
            await client.subscribe_refused(bus.SUBJECT_CAA_RPC, queue=bus.CAA_QUEUE_GROUP)
    for role in ("frontend", "validator", "admin"):
        async with connected(lab, role) as client:
            await client.subscribe_refused(bus.SUBJECT_REVOKE_RPC, queue=bus.REVOKE_QUEUE_GROUP)
    async with connected(lab, "validator") as validator:
        for subject in ("_INBOX.>", "_INBOX.frontend.>", "acme.jobs.>", f"$JS.ACK.{bus.JOBS_STREAM}.>", ">"):
            await validator.subscribe_refused(subject)
        # allow_responses: a reply only to a request it received, never to an inbox of its choosing.
        await validator.publish_refused("_INBOX.frontend.forged.1",
                                        bus.CaaRecheckReply(outcome="permitted").model_dump_json().encode())
    async with connected(lab, "signer") as signer:
        await signer.subscribe_refused("_INBOX.admin.>")
        await signer.publish_refused("_INBOX.admin.forged.1", b'{"v": 1, "outcome": "revoked"}')


async def test_each_service_may_do_its_job(lab: Lab) -> None:
    """The permissions leave the work possible: the frontend's user gets the validators' CAA
    answer, the admin's the signer's answer to a revocation request (of no certificate)."""
    async with connected(lab, "frontend") as frontend:
        request = bus.CaaRecheckRequest(account_uri="https://example.invalid/acct/1", checks=[])
        message = await frontend.nc.request(bus.SUBJECT_CAA_RPC, request.model_dump_json().encode(), timeout=10)
        assert bus.CaaRecheckReply.model_validate_json(message.data).outcome == "permitted"
    async with connected(lab, "admin") as admin:
        message = await admin.nc.request(bus.SUBJECT_REVOKE_RPC, revoke_request("no-such-certificate"), timeout=10)
        reply = bus.RevokeReply.model_validate_json(message.data)
        assert (reply.outcome, (reply.problem or {}).get("detail")) == ("rejected", "no such certificate")
        info = await admin.nc.jetstream().consumer_info(bus.JOBS_STREAM, bus.DURABLE_SIGNER)
        assert info.name == bus.DURABLE_SIGNER
        assert not admin.errors
