"""The signer service with the acme upstream, on a private nats-server and a real Pebble:
issue jobs from JetStream, revoke over NATS request/reply, and readiness."""

from __future__ import annotations

from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI
from pydantic import SecretStr

from acme_ra import bus
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import Certificate, Order
from acme_ra_signer.app import create_app

from .conftest import certificate_of, for_pebble, new_order, wait_until
from .pebble import Pebble, b64url

# RFC 5280 reason codes.
KEY_COMPROMISE = 1
SUPERSEDED = 4


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://signer")


async def revoke(nc: object, certificate_id: str, reason: int) -> bus.RevokeReply:
    request = bus.RevokeRequest(certificate_id=certificate_id, reason=reason)
    message = await nc.request(  # type: ignore[attr-defined]
        bus.SUBJECT_REVOKE_RPC, request.model_dump_json().encode(), timeout=bus.REVOKE_RPC_TIMEOUT_SECONDS
    )
    return bus.RevokeReply.model_validate_json(message.data)


async def issue_through_the_bus(nc: object, db: Database, names: list[str]) -> Certificate:
    order_id = await new_order(db, names)
    js = nc.jetstream()  # type: ignore[attr-defined]
    await bus.publish_job(js, bus.SUBJECT_ISSUE, bus.IssueJob(order_id=order_id), f"issue-{order_id}")

    async def valid() -> bool:
        async with db.sessions() as session:
            order = await session.get(Order, order_id)
            return order is not None and order.status == "valid"

    await wait_until(valid)
    return await certificate_of(db, order_id)


async def test_issue_and_revoke_through_the_signer_service(
    pebble: Pebble, settings: Settings, db: Database, nats_url: str
) -> None:
    app = create_app(settings.model_copy(update={"nats_url": nats_url}))
    nc = await bus.connect(nats_url, "frontend-test")
    try:
        async with app.router.lifespan_context(app), client(app) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["upstreams"] == {"default": {"state": "closed", "consecutive_failures": 0}}
            certificate = await issue_through_the_bus(nc, db, ["svc.example.test"])
            assert pebble.cert_status(certificate.serial)["Status"] == "Valid"

            reply = await revoke(nc, certificate.id, SUPERSEDED)
            assert reply.outcome == "revoked", reply
            status = pebble.cert_status(certificate.serial)
            assert status["Status"] == "Revoked" and status["Reason"] == SUPERSEDED
            async with db.sessions() as session:
                row = await session.get(Certificate, certificate.id)
                assert row is not None and row.revoked_at is not None and row.revocation_reason == SUPERSEDED

            # Asked again: the database already says so; the upstream is not bothered.
            assert (await revoke(nc, certificate.id, SUPERSEDED)).outcome == "already_revoked"

            # Revoked upstream but not recorded (a reply lost on the way): upstream's
            # alreadyRevoked counts as revoked and the database catches up.
            other = await issue_through_the_bus(nc, db, ["other.example.test"])
            leaf = x509.load_pem_x509_certificate(other.chain_pem.encode())
            await app.state.runtime.driver.revoke(
                leaf.public_bytes(Encoding.DER), KEY_COMPROMISE, order_id=other.order_id
            )
            assert pebble.cert_status(other.serial)["Status"] == "Revoked"
            assert (await revoke(nc, other.id, KEY_COMPROMISE)).outcome == "revoked"
            async with db.sessions() as session:
                row = await session.get(Certificate, other.id)
                assert row is not None and row.revocation_reason == KEY_COMPROMISE

            reply = await revoke(nc, "no-such-certificate", 0)
            assert reply.outcome == "rejected" and reply.problem == {
                "type": "malformed",
                "detail": "no such certificate",
            }

            metrics = (await http.get("/metrics")).text
            assert 'acme_ra_signer_revocations_total{outcome="revoked"} ' in metrics
            assert 'acme_ra_upstream_account_registrations_total{upstream="default"} ' in metrics
    finally:
        await nc.close()


async def test_revoke_while_the_upstream_is_down_is_unavailable(
    pebble: Pebble, settings: Settings, db: Database, nats_url: str
) -> None:
    app = create_app(settings.model_copy(update={"nats_url": nats_url}))
    nc = await bus.connect(nats_url, "frontend-test")
    try:
        async with app.router.lifespan_context(app), client(app) as http:
            certificate = await issue_through_the_bus(nc, db, ["down.example.test"])
            pebble.stop()
            reply = await revoke(nc, certificate.id, SUPERSEDED)
            assert reply.outcome == "unavailable" and reply.problem is None
            async with db.sessions() as session:
                row = await session.get(Certificate, certificate.id)
                assert row is not None and row.revoked_at is None

            async def upstream_reported() -> bool:
                ready = await http.get("/readyz")
                return ready.status_code == 503 and "upstream" in ready.json()["failed"]

            # The failed revocation made readiness ask the upstream again.
            await wait_until(upstream_reported)
    finally:
        await nc.close()


async def test_revoke_refused_upstream_is_rejected_with_a_problem(
    tmp_path: Path, pebble: Pebble, settings: Settings, db: Database, nats_url: str
) -> None:
    app = create_app(settings.model_copy(update={"nats_url": nats_url}))
    nc = await bus.connect(nats_url, "frontend-test")
    try:
        async with app.router.lifespan_context(app):
            certificate = await issue_through_the_bus(nc, db, ["reason.example.test"])
            # Reason 7 does not exist in RFC 5280: Pebble refuses it.
            reply = await revoke(nc, certificate.id, 7)
            assert reply.outcome == "rejected"
            assert reply.problem is not None and reply.problem["type"] == "badRevocationReason"
            assert reply.problem["detail"].startswith('upstream "default": ')
    finally:
        await nc.close()


async def test_readiness_names_the_eab_variable_when_the_key_is_wrong(
    pebble: Pebble, settings: Settings, db_url: str, nats_url: str
) -> None:
    wrong = for_pebble(settings, pebble, nats_url=nats_url, upstream_eab_hmac_key=SecretStr(b64url(b"\x02" * 32)))
    app = create_app(wrong)
    async with app.router.lifespan_context(app), client(app) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        failed = ready.json()["failed"]
        assert set(failed) == {"upstream"}
        assert "refused the account registration" in failed["upstream"]
        assert "ACME_RA_UPSTREAM_EAB_HMAC_KEY" in failed["upstream"]
        assert (await http.get("/healthz")).status_code == 200
