"""Issuance through a real Pebble with External Account Binding."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from sqlalchemy import event

from acme_ra.config import Settings
from acme_ra.db import fast
from acme_ra.db.engine import Database
from acme_ra.db.fast import Statement
from acme_ra.db.models import UpstreamOrderState
from acme_ra_signer.upstream.acme_client import tls_context
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.worker import IssueWorker

from .conftest import (
    certificate_of,
    for_pebble,
    make_acme_driver,
    new_order,
    order_row,
    run_job,
    upstream_accounts,
    upstream_order_row,
)
from .pebble import Pebble

NAMES = ["www.example.test", "api.example.test", "192.0.2.7"]


async def test_issues_through_pebble_with_eab(pebble: Pebble, db: Database, driver: AcmeDriver) -> None:
    order_id = await new_order(db, NAMES)
    msg = await run_job(IssueWorker(db, driver), order_id)
    assert msg.acks == 1

    order = await order_row(db, order_id)
    assert order.status == "valid", order.error
    certificate = await certificate_of(db, order_id)
    chain = x509.load_pem_x509_certificates(certificate.chain_pem.encode())
    leaf, issuer = chain[0], chain[1]
    # The chain ends in Pebble's intermediate, which its root signed.
    assert issuer == pebble.intermediate()
    leaf.verify_directly_issued_by(issuer)
    issuer.verify_directly_issued_by(pebble.root())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(NAMES[:2])
    assert certificate.serial == format(leaf.serial_number, "x")
    assert pebble.cert_status(certificate.serial)["Status"] == "Valid"
    assert pebble.issued_count() == 1

    record = await upstream_order_row(db, order_id)
    assert record is not None
    assert record.state == UpstreamOrderState.valid.value
    assert record.orders_created == 1 and record.finalized_at is not None
    assert record.url and record.certificate_url and record.lease_owner is None

    # One account, registered once with EAB; its key is sealed, never stored in the clear.
    [account] = await upstream_accounts(db)
    assert account.url and account.registrations == 1 and account.eab_kid == pebble.eab_kid
    assert b"PRIVATE KEY" not in account.key_sealed


class Recorder(httpx.AsyncBaseTransport):
    """Forwards to Pebble, noting each request and the connection (network stream) it went over."""

    def __init__(self, pebble: Pebble) -> None:
        self.inner = httpx.AsyncHTTPTransport(verify=tls_context(str(pebble.ca_bundle)))
        self.requests: list[str] = []
        self.streams: set[int] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.requests.append(f"{request.method} {request.url.path.split('/')[1]}")
        self.streams.add(id(response.extensions.get("network_stream")))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_one_issuance_one_connection_and_few_write_transactions(
    pebble: Pebble, settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an issuance costs: 7 upstream requests over one keep-alive connection, and the journal
    plus the certificate in 5 writing transactions (new record + "creating"; "pending"; "finalizing";
    "valid" + lease given up; the certificate), 6 if the upstream was still signing when asked.
    On PostgreSQL each is one statement on an autocommit connection (its own transaction); those
    run straight on asyncpg (``acme_ra.db.fast.Statement``) are counted where they are run."""
    recorder = Recorder(pebble)
    driver = make_acme_driver(settings, db, transport=recorder)
    writes: list[list[str]] = []

    def on_execute(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        first = statement.lstrip().split(" ", 1)[0].upper()
        writing = first == "WITH" and any(word in statement for word in ("INSERT", "UPDATE", "DELETE"))
        if first not in ("INSERT", "UPDATE", "DELETE") and not writing:
            return
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            writes.append([statement.split("(", 1)[0][:40]])
        else:
            conn.info.setdefault("writes", []).append(statement.split("(", 1)[0][:40])

    def on_fast_statement(statement: Statement, conn: Any) -> None:
        if statement.statement.is_dml:
            assert conn.sync_connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
            writes.append([f"{statement.statement.__visit_name__.upper()} (asyncpg)"])

    def on_commit(conn: Any) -> None:
        if conn.info.get("writes"):
            writes.append(conn.info.pop("writes"))

    def on_rollback(conn: Any) -> None:
        conn.info.pop("writes", None)

    engine = db.engine.sync_engine
    try:
        await driver.check()  # the account: registered once, not part of an issuance
        order_id = await new_order(db, ["one.example.test"])
        recorder.requests.clear()
        recorder.streams.clear()
        event.listen(engine, "before_cursor_execute", on_execute)
        monkeypatch.setattr(fast, "observers", [on_fast_statement])
        event.listen(engine, "commit", on_commit)
        event.listen(engine, "rollback", on_rollback)
        try:
            await run_job(IssueWorker(db, driver), order_id)
        finally:
            monkeypatch.undo()
            event.remove(engine, "before_cursor_execute", on_execute)
            event.remove(engine, "commit", on_commit)
            event.remove(engine, "rollback", on_rollback)
    finally:
        await driver.close()
    assert (await order_row(db, order_id)).status == "valid"
    assert recorder.requests[:5] == ["POST order-plz", "POST authZ", "POST chalZ", "POST authZ", "POST finalize-order"]
    assert recorder.requests[-1] == "POST certZ"
    assert len(recorder.streams) == 1, recorder.requests
    assert 5 <= len(writes) <= 6, writes
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.state == "valid" and record.lease_owner is None


async def test_the_account_is_reused_by_every_issuance(
    pebble: Pebble, settings: Settings, db: Database, driver: AcmeDriver
) -> None:
    worker = IssueWorker(db, driver)
    for name in ("one.example.test", "two.example.test", "three.example.test"):
        order_id = await new_order(db, [name])
        await run_job(worker, order_id)
        assert (await order_row(db, order_id)).status == "valid"
    [account] = await upstream_accounts(db)
    assert account.registrations == 1
    assert pebble.issued_count() == 3

    # A second driver (another replica, or a restart) uses the same stored account.
    other = make_acme_driver(settings, db)
    try:
        order_id = await new_order(db, ["four.example.test"])
        await run_job(IssueWorker(db, other), order_id)
    finally:
        await other.close()
    [account] = await upstream_accounts(db)
    assert account.registrations == 1


async def test_alternate_chains_are_stored(tmp_path: Path, db: Database, settings: Settings) -> None:
    alt = Pebble(tmp_path / "pebble-alt", env={"PEBBLE_ALTERNATE_ROOTS": "1"})
    driver = make_acme_driver(for_pebble(settings, alt), db)
    try:
        order_id = await new_order(db, ["alt.example.test"])
        await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
        alt.stop()
    certificate = await certificate_of(db, order_id)
    assert certificate.alternate_chains_pem is not None and len(certificate.alternate_chains_pem) == 1
    main = x509.load_pem_x509_certificates(certificate.chain_pem.encode())
    alternate = x509.load_pem_x509_certificates(certificate.alternate_chains_pem[0].encode())
    assert alternate[0] == main[0]
    assert alternate[1] != main[1]
    main[0].verify_directly_issued_by(alternate[1])


async def test_configured_lifetime_is_requested(pebble: Pebble, settings: Settings, db: Database) -> None:
    driver = make_acme_driver(for_pebble(settings, pebble, upstream_cert_lifetime_days=10), db)
    try:
        order_id = await new_order(db, ["short.example.test"])
        await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    certificate = await certificate_of(db, order_id)
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    assert abs((certificate.not_after - expected).total_seconds()) < 300


async def test_a_csr_the_upstream_refuses_fails_the_order(pebble: Pebble, db: Database, driver: AcmeDriver) -> None:
    from tests.signer.conftest import insert_order, make_csr

    # The CSR names another host than the order: Pebble refuses to finalize.
    order_id = await insert_order(db, ["right.example.test"], make_csr(["wrong.example.test"]))
    msg = await run_job(IssueWorker(db, driver), order_id)
    assert msg.acks == 1
    order = await order_row(db, order_id)
    assert order.status == "invalid"
    assert order.error is not None and order.error["type"] in ("badCSR", "malformed", "unauthorized")
    assert order.error["detail"].startswith('upstream "default": ')
    assert pebble.issued_count() == 0


class SlowSigner(httpx.AsyncBaseTransport):
    """Pebble, but its finalize answer and first order poll say "processing, Retry-After: 1"
    (as a slow CA does); records when the order was polled."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.finalized_at: float | None = None
        self.polls: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        path = request.url.path
        if path.startswith("/finalize-order/"):
            self.finalized_at = time.monotonic()
            return await self._processing(response)
        if path.startswith("/my-order/") and self.finalized_at is not None:
            self.polls.append(time.monotonic())
            if len(self.polls) == 1:
                return await self._processing(response)
        return response

    async def _processing(self, response: httpx.Response) -> httpx.Response:
        body = json.loads(await response.aread())
        body["status"] = "processing"
        body.pop("certificate", None)
        headers = [
            (k, v) for k, v in response.headers.items() if k.lower() not in ("content-length", "content-encoding")
        ]
        return httpx.Response(response.status_code, headers=[*headers, ("Retry-After", "1")], json=body)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_retry_after_of_a_slow_upstream_is_honoured(pebble: Pebble, settings: Settings, db: Database) -> None:
    slow = SlowSigner(httpx.AsyncHTTPTransport(verify=tls_context(str(pebble.ca_bundle))))
    driver = make_acme_driver(settings, db, transport=slow)
    try:
        order_id = await new_order(db, ["slow.example.test"])
        await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    assert (await order_row(db, order_id)).status == "valid"
    assert slow.finalized_at is not None and len(slow.polls) == 2
    assert slow.polls[0] - slow.finalized_at >= 1.0
    assert slow.polls[1] - slow.polls[0] >= 1.0
    assert slow.polls[1] - slow.finalized_at < 4.0


class RefusesValidity(httpx.AsyncBaseTransport):
    """Pebble, but newOrder with a notAfter is refused as some CAs do."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/order-plz"):
            payload = json.loads(await request.aread())["payload"]
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            if "notAfter" in body:
                return httpx.Response(
                    400,
                    headers={"Content-Type": "application/problem+json", "Replay-Nonce": "cmVmdXNlZA"},
                    json={"type": "urn:ietf:params:acme:error:malformed", "detail": "NotAfter is not supported"},
                )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_an_upstream_refusing_the_lifetime_fails_the_order_clearly(
    pebble: Pebble, settings: Settings, db: Database
) -> None:
    inner = httpx.AsyncHTTPTransport(verify=tls_context(str(pebble.ca_bundle)))
    driver = make_acme_driver(
        for_pebble(settings, pebble, upstream_cert_lifetime_days=30), db, transport=RefusesValidity(inner)
    )
    try:
        order_id = await new_order(db, ["lifetime.example.test"])
        await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    order = await order_row(db, order_id)
    assert order.status == "invalid" and order.error is not None
    detail = order.error["detail"]
    assert detail.startswith('upstream "default": NotAfter is not supported (acme-ra asked for the validity '), detail
    assert "ACME_RA_UPSTREAM_CERT_LIFETIME_DAYS" in detail
    assert pebble.issued_count() == 0
