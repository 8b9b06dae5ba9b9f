"""Logs: one JSON object per line, the job events carrying the order's trace and span ids and the
order id; and after a run with EAB on both sides (clients to acme-ra, acme-ra to Pebble) and a
revocation, no EAB HMAC key, private key or JWS is in any service's log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import TracedLab

pytestmark = pytest.mark.integration

# The services' logs (STATE_DIR/logs/<name>.log); migrate and bootstrap write there too.
SERVICE_LOGS = ("frontend", "validator", "signer")


def events(traced: TracedLab, service: str) -> list[dict[str, Any]]:
    """The JSON events of a service's log (lines that are not JSON fail the test)."""
    found = []
    for number, line in enumerate((traced.log_dir / f"{service}.log").read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"{service}.log:{number} is not JSON: {line[:300]}")
        assert isinstance(event, dict) and {"ts", "level", "service", "msg"} <= set(event), line
        found.append(event)
    return found


def test_every_line_is_a_json_event(traced_pebble: TracedLab) -> None:
    for service in SERVICE_LOGS:
        assert events(traced_pebble, service), f"{service} logged nothing"


def test_job_events_carry_the_orders_trace_span_and_order_ids(traced_pebble: TracedLab) -> None:
    spans = traced_pebble.otlp.wait_for(
        "the signer's job spans (issue and revoke)",
        lambda received: sum(s.name == "signer.issue" for s in received) >= len(traced_pebble.issued)
        and sum(s.name == "signer.revoke" for s in received) >= len(traced_pebble.revoked),
    )
    by_id = {span.span_id: span for span in spans}

    issue_jobs = [e for e in events(traced_pebble, "signer") if e["msg"] == "issue job: issued"]
    assert len(issue_jobs) == len(traced_pebble.issued)
    for event in issue_jobs:
        span = by_id.get(event.get("span_id", ""))
        assert span is not None and span.name == "signer.issue", event
        assert event["trace_id"] == span.trace_id
        assert event["order_id"] == span.attributes["acme.order_id"]

    # The validator's job names a challenge; its order id is there when the job carries one
    # (the frontend's ValidateJob.order_id is optional: an authorization may serve several orders).
    validations = [e for e in events(traced_pebble, "validator") if e["msg"] == "validation job done"]
    assert len(validations) >= len(traced_pebble.issued)
    for event in validations:
        span = by_id.get(event.get("span_id", ""))
        assert span is not None and span.name == "validator.validate", event
        assert event["trace_id"] == span.trace_id
        assert event["challenge_id"] == span.attributes["acme.challenge_id"]

    revocations = [e for e in events(traced_pebble, "signer") if e["msg"] == "revoke: revoked"]
    assert len(revocations) == len(traced_pebble.revoked)
    for event in revocations:
        span = by_id.get(event.get("span_id", ""))
        assert span is not None and span.name == "signer.revoke", event
        assert event["order_id"] and event["trace_id"] == span.trace_id


def test_no_secret_in_any_log(traced_pebble: TracedLab) -> None:
    logs = traced_pebble.service_logs()
    assert set(SERVICE_LOGS) <= set(logs), sorted(logs)
    secrets = {
        "the client's EAB HMAC key": traced_pebble.eab["hmac_key"],
        "the upstream EAB HMAC key": traced_pebble.env["ACME_RA_UPSTREAM_EAB_HMAC_KEY"],
        "the sealing secret": traced_pebble.env["ACME_RA_SECRET_KEY"],
        "a PEM private key": "PRIVATE KEY",
        "a JWS (flattened JSON)": '"protected"',
        "a JWS signature member": '"signature"',
        "base64url JSON (a JWS header or payload)": "eyJ",
    }
    for name, text in logs.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} in {name}.log:\n" + "\n".join(
                line for line in text.splitlines() if secret in line
            )[:2000]
