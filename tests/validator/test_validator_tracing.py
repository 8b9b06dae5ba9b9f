"""Tracing: a job's spans join the order's trace given in the job's ``traceparent`` header."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator

import pytest
from cryptography import x509
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from acme_ra import bus, telemetry
from acme_ra.db.engine import Database
from acme_ra_validator.http01 import ValidationPorts, new_http_client
from acme_ra_validator.worker import ChallengeValidator, ValidationOptions

from .conftest import LAB_POLICY, DnsLab, HttpLab, TlsLab, challenge_certificate
from .rows import insert_pending_order, snapshot

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


class FakeMsg:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    async def ack(self) -> None:
        pass


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory (the global tracer provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "tracer", provider.get_tracer("acme_ra"))
    monkeypatch.setattr(telemetry, "_enabled", True)
    yield exporter
    provider.shutdown()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def run_job(db: Database, dns_lab: DnsLab, ports: ValidationPorts, challenge_id: str) -> None:
    options = ValidationOptions(ports, LAB_POLICY, ("ca.example",), external_url="https://ra.example:8443")
    async with new_http_client() as http:
        validator = ChallengeValidator(db, http, dns_lab.resolver(), options, authz_lifetime=dt.timedelta(days=1))
        job = bus.ValidateJob(challenge_id=challenge_id)
        await validator.handle(job, FakeMsg({"traceparent": TRACEPARENT}))  # type: ignore[arg-type]


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


async def test_http01_job_spans_share_the_orders_trace(
    spans: InMemorySpanExporter, db: Database, dns_lab: DnsLab, http_lab: HttpLab
) -> None:
    rows = await insert_pending_order(db, "traced.example.test")
    dns_lab.zone.add("traced.example.test. 60 IN A 127.0.0.1")
    http_lab.routes[f"/.well-known/acme-challenge/{rows.token}"] = (200, {}, rows.key_authorization.encode())

    await run_job(db, dns_lab, ValidationPorts(http_lab.port, 443), rows.challenge_id)

    assert (await snapshot(db, rows))["challenge"]["status"] == "valid"
    finished = spans.get_finished_spans()
    names = {span.name for span in finished}
    assert {"validator.validate", "validator.dns_lookup", "validator.http_fetch", "validator.caa_check"} <= names
    assert {format(span.context.trace_id, "032x") for span in finished} == {TRACE_ID}

    (root,) = by_name(finished, "validator.validate")
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_SPAN_ID
    assert root.attributes is not None
    assert root.attributes["acme.challenge_type"] == "http-01"
    assert root.attributes["acme.challenge_id"] == rows.challenge_id
    assert root.attributes["acme.outcome"] == "valid"
    # The A lookup and the fetch hang under the job's span; the CAA lookups under the CAA check.
    (fetch,) = by_name(finished, "validator.http_fetch")
    (caa,) = by_name(finished, "validator.caa_check")
    assert fetch.parent is not None and fetch.parent.span_id == root.context.span_id
    assert caa.parent is not None and caa.parent.span_id == root.context.span_id
    lookups = by_name(finished, "validator.dns_lookup")
    assert {span.attributes["dns.question.type"] for span in lookups if span.attributes} == {"A/AAAA", "CAA"}
    # Never the key authorization (nor the account key) in any attribute.
    for span in finished:
        for value in (span.attributes or {}).values():
            assert rows.key_authorization not in str(value)


async def test_tls_alpn01_job_has_a_handshake_span(
    spans: InMemorySpanExporter, db: Database, dns_lab: DnsLab, tls_lab: TlsLab
) -> None:
    rows = await insert_pending_order(db, "myhost.localhost", challenge_type="tls-alpn-01")
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName("myhost.localhost")], "not this one"))

    await run_job(db, dns_lab, ValidationPorts(80, port), rows.challenge_id)

    finished = spans.get_finished_spans()
    (root,) = by_name(finished, "validator.validate")
    (handshake,) = by_name(finished, "validator.tls_handshake")
    assert format(handshake.context.trace_id, "032x") == TRACE_ID
    assert handshake.parent is not None and handshake.parent.span_id == root.context.span_id
    assert handshake.attributes is not None and handshake.attributes["tls.alpn"] == "acme-tls/1"
    assert root.attributes is not None and root.attributes["acme.outcome"] == "unauthorized"
