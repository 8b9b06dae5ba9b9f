"""One trace per order: a certificate issued through the three services (certbot, http-01) shows
in the test's own OTLP/HTTP receiver as one trace holding the frontend's, the validator's and
the signer's spans, with a valid parent/child tree, the upstream calls, and no secret."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.dns_server import TestDnsServer

from .conftest import Issued, TracedLab, issue, start_topology
from .otlp import OtlpReceiver, ReceivedSpan, ancestors, broken_links

pytestmark = pytest.mark.integration

SERVICES = {"acme-ra-frontend", "acme-ra-validator", "acme-ra-signer"}
# What every issuance's trace holds, whatever the upstream.
FRONTEND_SPANS = {"acme.new_order", "acme.authorization", "acme.challenge", "acme.finalize", "acme.certificate"}
VALIDATOR_SPANS = {"validator.validate", "validator.dns_lookup", "validator.http_fetch", "validator.caa_check"}
SIGNER_SPANS = {"signer.issue", "signer.upstream.issue"}
# Long enough that nothing is exported while the test runs: only the flush at shutdown sends.
SHUTDOWN_TEST_BATCH_DELAY_MS = 600_000
# Attributes an upstream HTTP span carries.
HTTP_ATTRIBUTES = {"http.request.method", "url.template", "http.response.status_code", "acme.upstream"}


def fetched_name(span: ReceivedSpan) -> str | None:
    url = span.attributes.get("url.full")
    return urlsplit(str(url)).hostname if span.name == "validator.http_fetch" and url else None


def trace_of(traced: TracedLab, issued: Issued) -> list[ReceivedSpan]:
    """The trace of the order that issued ``issued``, once all its spans have arrived: the one
    whose validator fetched the name's http-01 answer."""

    def complete(spans: list[ReceivedSpan]) -> bool:
        ids = {span.trace_id for span in spans if fetched_name(span) == issued.name}
        if len(ids) != 1:
            return False
        names = {span.name for span in spans if span.trace_id in ids}
        return FRONTEND_SPANS | VALIDATOR_SPANS | SIGNER_SPANS <= names

    spans = traced.otlp.wait_for(f"the trace of {issued.name}", complete)
    (trace_id,) = {span.trace_id for span in spans if fetched_name(span) == issued.name}
    return [span for span in spans if span.trace_id == trace_id]


def only(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name}: {[s.describe() for s in found]}"
    return found[0]


def issued_by(spans: list[ReceivedSpan]) -> ReceivedSpan:
    """The ``signer.upstream.issue`` span of the job attempt that issued the certificate."""
    issue = only([s for s in spans if s.name == "signer.issue" and s.attributes["acme.outcome"] == "issued"],
                 "signer.issue")
    return only([s for s in spans if s.name == "signer.upstream.issue" and s.parent_span_id == issue.span_id],
                "signer.upstream.issue")


def assert_one_order_one_trace(spans: list[ReceivedSpan]) -> None:
    assert {span.service for span in spans} == SERVICES, sorted({span.service for span in spans})
    assert not broken_links(spans), broken_links(spans)
    root = next(span for span in spans if not span.parent_span_id)
    assert (root.service, root.name) == ("acme-ra-frontend", "acme.new_order")
    order_id = root.attributes.get("acme.order_id") or only(spans, "signer.issue").attributes["acme.order_id"]

    # The jobs continue the frontend request that published them (a redelivered job shows each
    # attempt; one of them did the work).
    by_id = {span.span_id: span for span in spans}
    validations = [span for span in spans if span.name == "validator.validate"]
    assert [span.attributes["acme.outcome"] for span in validations].count("valid") == 1, validations
    for validate in validations:
        assert by_id[validate.parent_span_id].name == "acme.challenge"
    issues = [span for span in spans if span.name == "signer.issue"]
    issue = only([span for span in issues if span.attributes["acme.outcome"] == "issued"], "signer.issue")
    assert all(span.attributes["acme.outcome"] in ("issued", "retry", "duplicate") for span in issues), issues
    for attempt in issues:
        assert by_id[attempt.parent_span_id].name == "acme.finalize"
        assert attempt.attributes["acme.order_id"] == order_id
    # The checks are inside a job's span.
    for span in spans:
        if span.name in VALIDATOR_SPANS - {"validator.validate"}:
            assert any(validate in ancestors(span, spans) for validate in validations), span.describe()
    assert any(issue in ancestors(span, spans) for span in spans if span.name == "signer.upstream.issue")


def test_an_order_is_one_trace_across_the_three_services(traced_lab: TracedLab) -> None:
    (issued,) = traced_lab.issued
    spans = trace_of(traced_lab, issued)
    assert_one_order_one_trace(spans)
    upstream = issued_by(spans)
    assert upstream.attributes["acme.upstream_driver"] == "lab"


def test_with_pebble_upstream_the_trace_holds_each_upstream_request(traced_pebble: TracedLab) -> None:
    issued = traced_pebble.issued[1]  # not revoked: issuance only
    spans = trace_of(traced_pebble, issued)
    assert_one_order_one_trace(spans)
    upstream = issued_by(spans)
    assert upstream.attributes["acme.upstream_driver"] == "acme"

    requests = [span for span in spans if upstream in ancestors(span, spans) and span.name != upstream.name]
    assert requests, "no upstream HTTP request in the trace"
    for span in requests:
        assert HTTP_ATTRIBUTES <= set(span.attributes), span
        assert span.attributes["acme.upstream"] == "default"
        assert span.name == f"{span.attributes['http.request.method']} {span.attributes['url.template']}"
        assert span.attributes["server.address"] == "127.0.0.1"
    methods_and_paths = {span.name for span in requests}
    # Pebble's resources: a new order, its authorization and challenge, finalize, the certificate;
    # ids are templated away.
    assert "POST /order-plz" in methods_and_paths, methods_and_paths
    assert {"POST /finalize-order/{id}", "POST /certZ/{id}", "POST /authZ/{id}"} <= methods_and_paths, methods_and_paths
    assert all(span.attributes["http.response.status_code"] < 400 for span in requests if "order" in span.name)
    new_order = next(span for span in requests if span.name == "POST /order-plz")
    assert new_order.attributes["acme.resource"] == "newOrder"


def test_a_revocation_joins_the_certificates_order_trace(traced_pebble: TracedLab) -> None:
    revoked = traced_pebble.revoked[0]

    def revoke_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [span for span in spans if span.name == "signer.revoke"]

    traced_pebble.otlp.wait_for("signer.revoke", lambda spans: bool(revoke_spans(spans)))
    spans = trace_of(traced_pebble, revoked)
    revoke = only(spans, "signer.revoke")
    assert revoke.attributes["acme.outcome"] == "revoked"
    upstream = only(spans, "signer.upstream.revoke")
    assert revoke in ancestors(upstream, spans)
    revoke_cert = [span for span in spans if span.attributes.get("acme.resource") == "revokeCert"]
    assert revoke_cert and all(upstream in ancestors(span, spans) for span in revoke_cert)
    assert not broken_links(spans), broken_links(spans)


def test_no_span_attribute_holds_a_secret(traced_lab: TracedLab, traced_pebble: TracedLab) -> None:
    spans = traced_pebble.otlp.snapshot()
    assert spans and not traced_pebble.otlp.errors, traced_pebble.otlp.errors
    secrets = {
        "the client's EAB HMAC key": traced_pebble.eab["hmac_key"],
        "the upstream EAB HMAC key": traced_pebble.env["ACME_RA_UPSTREAM_EAB_HMAC_KEY"],
        "the sealing secret": traced_pebble.env["ACME_RA_SECRET_KEY"],
        "a PEM private key": "PRIVATE KEY",
        "a PEM certificate": "BEGIN CERTIFICATE",
        "a JWS": '"protected"',
        "base64url JSON (a JWS part)": "eyJ",
    }
    for span in spans:
        text = f"{span.name} {span.attributes}"
        for what, secret in secrets.items():
            assert secret not in text, f"{what} in {span.describe()}: {span.attributes}"


def test_the_workers_flush_their_spans_when_stopped(
    test_dns: TestDnsServer, tmp_path: Path, fresh_database_url: str
) -> None:
    """Spans still batched at SIGTERM are exported before the validator and signer exit."""
    with OtlpReceiver() as otlp:
        lab = start_topology(tmp_path, test_dns, fresh_database_url, otlp,
                             {"OTEL_BSP_SCHEDULE_DELAY": str(SHUTDOWN_TEST_BATCH_DELAY_MS)})
        try:
            traced = TracedLab(lab, otlp, dict(lab.topology.child_env))
            issue(traced, "flushed", tmp_path / "certbot")
            batched = {span.service for span in otlp.snapshot()}
        finally:
            lab.topology.stop()
        assert not {"acme-ra-validator", "acme-ra-signer"} & batched, "exported before the stop: this proves nothing"
        names = {(span.service, span.name) for span in otlp.snapshot()}
    assert {("acme-ra-validator", "validator.validate"), ("acme-ra-signer", "signer.issue")} <= names, names
