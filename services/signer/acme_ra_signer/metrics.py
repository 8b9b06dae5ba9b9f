"""The signer's Prometheus metrics (default registry, served on /metrics). Labels are bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

from acme_ra_signer.upstream.base import UpstreamRejected, UpstreamUnavailable

Operation = Literal["issue", "revoke", "check"]

CERTIFICATES_ISSUED = Counter(
    "acme_ra_certificates_issued_total", "Certificates stored for an order (one per order)."
)
UPSTREAM_REQUESTS = Counter(
    "acme_ra_upstream_requests_total",
    "Calls to the upstream CA by operation and outcome (ok, rejected, unavailable, error).",
    ["operation", "outcome"],
)
UPSTREAM_DURATION = Histogram(
    "acme_ra_upstream_request_duration_seconds",
    "Duration of calls to the upstream CA (an ACME upstream can take minutes).",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
JOBS_IN_FLIGHT = Gauge("acme_ra_signer_jobs_in_flight", "Issue jobs being handled now.")
JOBS = Counter(
    "acme_ra_signer_jobs_total",
    "Issue jobs handled, by outcome (issued, failed, duplicate, missing, retry).",
    ["outcome"],
)


@contextmanager
def upstream_call(operation: Operation) -> Iterator[None]:
    """Count and time one upstream call; the outcome follows the exception raised, if any."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except UpstreamRejected:
        outcome = "rejected"
        raise
    except UpstreamUnavailable:
        outcome = "unavailable"
        raise
    finally:
        UPSTREAM_DURATION.labels(operation).observe(time.perf_counter() - started)
        UPSTREAM_REQUESTS.labels(operation, outcome).inc()
UPSTREAM_ACCOUNT_REGISTRATIONS = Counter(
    "acme_ra_upstream_account_registrations_total",
    "Upstream account registrations by upstream name (more than one: the upstream lost the account).",
    ["upstream"],
)
UPSTREAM_BREAKER_STATE = Gauge(
    "acme_ra_upstream_breaker_state",
    "Circuit breaker of each upstream: 0 closed, 1 half-open (one probe let through), 2 open (skipped).",
    ["upstream"],
)
UPSTREAM_FAILOVERS = Counter(
    "acme_ra_upstream_failovers_total",
    "Orders moved from an unavailable upstream to the next of their list (never once finalized).",
    ["from_upstream", "to_upstream"],
)
UPSTREAM_ORDERS_CREATED = Counter(
    "acme_ra_upstream_orders_created_total",
    "newOrder requests sent upstream, by upstream name (one per acme-ra order unless one was lost).",
    ["upstream"],
)
UPSTREAM_VALIDATIONS = Counter(
    "acme_ra_upstream_validations_total",
    "Upstream authorizations the signer proved itself, by upstream, method and outcome (valid, failed).",
    ["upstream", "method", "outcome"],
)
UPSTREAM_VALIDATION_SECONDS = Histogram(
    "acme_ra_upstream_validation_seconds",
    "Time from publishing the upstream challenge response to the upstream's verdict, by method.",
    ["upstream", "method"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
)
REVOCATIONS = Counter(
    "acme_ra_signer_revocations_total",
    "Revoke requests answered, by outcome (revoked, already_revoked, unavailable, rejected).",
    ["outcome"],
)
PURGED_ROWS = Counter(
    "acme_ra_purged_rows_total",
    "Rows the retention purge deleted (ACME_RA_RETENTION_DAYS), by table.",
    ["table"],
)
PURGE_SECONDS = Histogram(
    "acme_ra_purge_duration_seconds",
    "Duration of a retention purge run (the signers take turns; a skipped run is not counted).",
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
PURGE_LAST_SUCCESS = Gauge(
    "acme_ra_purge_last_success_timestamp_seconds", "When this signer last finished a retention purge (Unix time)."
)
PURGE_FAILURES = Counter("acme_ra_purge_failures_total", "Retention purge runs that failed (the next runs in an hour).")
CERTIFICATES_EXPIRING = Gauge(
    "acme_ra_certificates_expiring",
    "Unrevoked certificates expiring within 7 or 30 days that no later certificate for the same names "
    "replaced, by upstream.",
    ["upstream", "within"],
    multiprocess_mode="max",
)
