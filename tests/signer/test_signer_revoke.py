"""The revoke responder with the lab driver (and scripted drivers for the failure outcomes)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cryptography import x509
from sqlalchemy import select

from acme_ra import blocked_keys, bus
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import BlockedKey, Certificate
from acme_ra_signer.revoker import RevokeResponder
from acme_ra_signer.upstream import IssuedChain, IssueRequest, UpstreamDriver, UpstreamRejected, UpstreamUnavailable
from acme_ra_signer.upstream.lab import LabDriver
from acme_ra_signer.worker import IssueWorker

from .conftest import insert_order, make_csr


class FakeMsg:
    async def ack(self) -> None:
        return None

    async def in_progress(self) -> None:
        return None


class FakeJetStream:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, subject: str, payload: bytes, **_: Any) -> None:
        self.published.append((subject, json.loads(payload)))


class RefusingDriver(UpstreamDriver):
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls: list[tuple[int, str | None]] = []

    async def issue(self, request: IssueRequest) -> IssuedChain:
        raise NotImplementedError

    async def revoke(self, cert_der: bytes, reason: int, order_id: str | None = None) -> None:
        self.calls.append((reason, order_id))
        raise self.error

    async def check(self) -> None:
        return None


async def issued_certificate(db: Database, settings: Settings) -> Certificate:
    driver = LabDriver.from_settings(settings)
    order_id = await insert_order(db, ["revoke.example.test"], make_csr(["revoke.example.test"]))
    await IssueWorker(db, driver).handle(bus.IssueJob(order_id=order_id), FakeMsg())
    async with db.sessions() as session:
        return (await session.execute(select(Certificate).where(Certificate.order_id == order_id))).scalar_one()


async def stored(db: Database, certificate_id: str) -> Certificate:
    async with db.sessions() as session:
        row = await session.get(Certificate, certificate_id)
        assert row is not None
        return row


async def test_lab_revocation_is_recorded_once(settings: Settings, db: Database) -> None:
    certificate = await issued_certificate(db, settings)
    js = FakeJetStream()
    responder = RevokeResponder(db, LabDriver.from_settings(settings), js)  # type: ignore[arg-type]

    reply = await responder.answer(bus.RevokeRequest(certificate_id=certificate.id, reason=4))
    assert reply == bus.RevokeReply(outcome="revoked")
    row = await stored(db, certificate.id)
    assert row.revoked_at is not None and row.revocation_reason == 4
    assert js.published == [
        (
            "acme.events.revoked",
            {"v": 1, "kind": "revoked", "order_id": certificate.order_id, "challenge_id": None, "status": None,
             "validated": None, "error": None, "certificate_id": certificate.id},
        )
    ]

    again = await responder.answer(bus.RevokeRequest(certificate_id=certificate.id, reason=1))
    assert again.outcome == "already_revoked"
    assert (await stored(db, certificate.id)).revocation_reason == 4


async def test_unknown_certificate_is_rejected(settings: Settings, db: Database) -> None:
    responder = RevokeResponder(db, LabDriver.from_settings(settings))
    reply = await responder.answer(bus.RevokeRequest(certificate_id="nope", reason=0))
    assert reply.outcome == "rejected" and reply.problem == {"type": "malformed", "detail": "no such certificate"}


async def test_upstream_refusal_and_unavailability(settings: Settings, db: Database) -> None:
    certificate = await issued_certificate(db, settings)
    refusing = RefusingDriver(UpstreamRejected({"type": "unauthorized", "detail": "not yours", "extra": 1}))
    reply = await RevokeResponder(db, refusing).answer(bus.RevokeRequest(certificate_id=certificate.id, reason=5))
    assert reply.outcome == "rejected" and reply.problem == {"type": "unauthorized", "detail": "not yours"}
    assert refusing.calls == [(5, certificate.order_id)]

    down = RefusingDriver(UpstreamUnavailable("connection refused"))
    reply = await RevokeResponder(db, down).answer(bus.RevokeRequest(certificate_id=certificate.id, reason=5))
    assert reply == bus.RevokeReply(outcome="unavailable")
    assert (await stored(db, certificate.id)).revoked_at is None


async def test_slow_upstream_is_unavailable_before_the_frontend_gives_up(settings: Settings, db: Database) -> None:
    class Slow(RefusingDriver):
        async def revoke(self, cert_der: bytes, reason: int, order_id: str | None = None) -> None:
            await asyncio.sleep(5)

    certificate = await issued_certificate(db, settings)
    responder = RevokeResponder(db, Slow(RuntimeError()), upstream_timeout=0.2)
    reply = await responder.answer(bus.RevokeRequest(certificate_id=certificate.id, reason=0))
    assert reply.outcome == "unavailable"


async def test_key_compromise_blocks_the_key_other_reasons_do_not(settings: Settings, db: Database) -> None:
    responder = RevokeResponder(db, LabDriver.from_settings(settings), FakeJetStream())  # type: ignore[arg-type]
    superseded = await issued_certificate(db, settings)
    compromised = await issued_certificate(db, settings)

    async def blocked(certificate: Certificate) -> bool:
        key = x509.load_pem_x509_certificate(certificate.chain_pem.encode()).public_key()
        async with db.sessions() as session:
            return await blocked_keys.is_blocked(session, key)

    assert (await responder.answer(bus.RevokeRequest(certificate_id=superseded.id, reason=4))).outcome == "revoked"
    assert not await blocked(superseded)
    assert (await responder.answer(bus.RevokeRequest(certificate_id=compromised.id, reason=1))).outcome == "revoked"
    assert await blocked(compromised)
    async with db.sessions() as session:
        row = await session.get(BlockedKey, blocked_keys.spki_sha256(
            x509.load_pem_x509_certificate(compromised.chain_pem.encode()).public_key()))
    assert row is not None and row.certificate_id == compromised.id
    # Asked again: already revoked, still one block.
    again = await responder.answer(bus.RevokeRequest(certificate_id=compromised.id, reason=1))
    assert again.outcome == "already_revoked"
