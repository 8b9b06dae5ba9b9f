"""After a few issuances (and a revocation) through Pebble, every service's /metrics shows the
figures operators need, and no label value names a domain, serial number, or account, order or
certificate id."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support.lab import TEST_ZONE

from .conftest import TracedLab, acme_ra

pytestmark = pytest.mark.integration

# The frontend refreshes its database and JetStream figures every 15 s (metrics.REFRESH_INTERVAL).
REFRESH_WAIT_SECONDS = 30.0
# Label names that would be unbounded.
UNBOUNDED_LABELS = {"serial", "domain", "identifier", "name", "host", "account", "account_id", "order_id",
                    "certificate_id", "kid", "url", "path", "token"}
# A label value that looks like an id: long hex or base64url runs.
ID_LIKE = re.compile(r"[0-9a-f]{16,}|[A-Za-z0-9_-]{22,}")


def scrape(url: str) -> list[Sample]:
    response = httpx.get(url, timeout=10, trust_env=False)
    assert response.status_code == 200, f"{url}: {response.status_code}"
    assert response.headers["content-type"].startswith("text/plain"), response.headers["content-type"]
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def wait_for_page(url: str, ready: Callable[[list[Sample]], bool]) -> list[Sample]:
    deadline = time.monotonic() + REFRESH_WAIT_SECONDS
    while True:
        samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


@pytest.fixture(scope="module")
def pages(traced_pebble: TracedLab) -> dict[str, list[Sample]]:
    urls = traced_pebble.metrics_urls
    issued = len(traced_pebble.issued)

    def settled(samples: list[Sample]) -> bool:
        """Refreshed since the clients' requests (they redeemed nonces), with no open order left and
        every job acknowledged: not the refresh at start-up, when everything was 0 too."""
        backlog = value(samples, "acme_ra_jobs_pending") + value(samples, "acme_ra_jobs_unacknowledged")
        open_orders = sum(value(samples, "acme_ra_orders", status=s) for s in ("pending", "ready", "processing"))
        refreshed = any(s.name == "acme_ra_orders" for s in samples) and value(samples, "acme_ra_nonces_redeemed") > 0
        return refreshed and open_orders == 0 and backlog == 0

    signer = wait_for_page(urls["signer"], lambda samples: value(samples, "acme_ra_certificates_issued_total") >= issued)
    return {
        "frontend": wait_for_page(urls["frontend"], settled),
        "validator": scrape(urls["validator"]),
        "signer": signer,
    }


def test_the_frontend_counts_requests_by_route_template_with_latency(
    traced_pebble: TracedLab, pages: dict[str, list[Sample]]
) -> None:
    frontend = pages["frontend"]
    issued = len(traced_pebble.issued)
    new_order = {"route": "/acme/{provisioner}/new-order", "method": "POST"}
    assert value(frontend, "acme_ra_http_requests_total", status="201", **new_order) >= issued
    assert value(frontend, "acme_ra_http_request_duration_seconds_count", **new_order) >= issued
    buckets = [s for s in frontend if s.name == "acme_ra_http_request_duration_seconds_bucket"
               and s.labels["route"] == new_order["route"]]
    assert {s.labels["le"] for s in buckets} >= {"0.1", "1.0", "+Inf"}
    routes = {s.labels["route"] for s in frontend if s.name == "acme_ra_http_requests_total"}
    assert {"/acme/{provisioner}/directory", "/acme/{provisioner}/order/{order_id}/finalize",
            "/acme/{provisioner}/challenge/{authz_id}/{challenge_id}", "/acme/{provisioner}/revoke-cert"} <= routes
    assert value(frontend, "acme_ra_http_requests_total", route="/acme/{provisioner}/revoke-cert", status="200") == 1


def test_the_frontend_shows_orders_backlog_and_nonce_store(
    traced_pebble: TracedLab, pages: dict[str, list[Sample]]
) -> None:
    frontend = pages["frontend"]
    assert value(pages["signer"], "acme_ra_certificates_issued_total") == len(traced_pebble.issued)
    for status in ("pending", "ready", "processing"):
        assert any(s.name == "acme_ra_orders" and s.labels["status"] == status for s in frontend), status
    for consumer in ("validator", "signer"):
        pending = [s for s in frontend if s.name == "acme_ra_jobs_pending" and s.labels["consumer"] == consumer]
        unacked = [s for s in frontend if s.name == "acme_ra_jobs_unacknowledged" and s.labels["consumer"] == consumer]
        assert len(pending) == len(unacked) == 1, consumer
        assert pending[0].value == unacked[0].value == 0, consumer  # every job done
    assert value(frontend, "acme_ra_nonces_redeemed") > 0


def test_the_validator_counts_validations_by_type_and_result_with_duration(
    traced_pebble: TracedLab, pages: dict[str, list[Sample]]
) -> None:
    validator = pages["validator"]
    issued = len(traced_pebble.issued)
    assert value(validator, "acme_ra_validations_total", type="http-01", result="valid") >= issued
    assert value(validator, "acme_ra_validation_duration_seconds_count", type="http-01") >= issued
    assert value(validator, "acme_ra_validator_jobs_in_flight") == 0


def test_the_signer_counts_upstream_calls_certificates_and_revocations(
    traced_pebble: TracedLab, pages: dict[str, list[Sample]]
) -> None:
    signer = pages["signer"]
    issued, revoked = len(traced_pebble.issued), len(traced_pebble.revoked)
    assert value(signer, "acme_ra_upstream_requests_total", operation="issue", outcome="ok") == issued
    assert value(signer, "acme_ra_upstream_requests_total", operation="revoke", outcome="ok") == revoked
    assert value(signer, "acme_ra_upstream_requests_total", operation="check", outcome="ok") >= 1
    assert value(signer, "acme_ra_upstream_request_duration_seconds_count", operation="issue") == issued
    assert value(signer, "acme_ra_certificates_issued_total") == issued
    assert value(signer, "acme_ra_signer_revocations_total", outcome="revoked") == revoked
    assert value(signer, "acme_ra_signer_jobs_total", outcome="issued") == issued
    assert value(signer, "acme_ra_upstream_orders_created_total", upstream="default") == issued


def test_no_label_names_a_domain_serial_or_id(traced_pebble: TracedLab, pages: dict[str, list[Sample]]) -> None:
    env = traced_pebble.env
    orders = json.loads(acme_ra(["orders", "list", "--json"], env))
    accounts = json.loads(acme_ra(["accounts", "list", "--json"], env))
    certificates = json.loads(acme_ra(["certs", "list", "--json"], env))
    assert len(orders) == len(certificates) == len(traced_pebble.issued) and accounts
    forbidden = {TEST_ZONE, traced_pebble.eab["kid"]}
    forbidden |= {issued.serial for issued in traced_pebble.issued}
    forbidden |= {issued.name for issued in traced_pebble.issued}
    forbidden |= {row["id"] for row in orders + accounts + certificates}
    forbidden |= {row["serial"] for row in certificates}
    for service, samples in pages.items():
        for sample in samples:
            assert not UNBOUNDED_LABELS & set(sample.labels), f"{service}: {sample}"
            for label, text in sample.labels.items():
                assert not any(secret in text for secret in forbidden), f"{service}: {sample}"
                assert not ID_LIKE.search(text), f"{service}: {label}={text!r} looks like an id: {sample}"
