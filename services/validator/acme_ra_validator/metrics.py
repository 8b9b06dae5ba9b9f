"""Prometheus metrics of the validator. Labels are bounded: never a domain, token or id."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")

VALIDATIONS = Counter(
    "acme_ra_validations_total",
    "Challenge validations by type and result (valid, or the problem type).",
    ["type", "result"],
)
VALIDATION_SECONDS = Histogram(
    "acme_ra_validation_duration_seconds",
    "Time spent checking one challenge (network included, database excluded).",
    ["type"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 45),
)
JOBS_IN_FLIGHT = Gauge("acme_ra_validator_jobs_in_flight", "Validation jobs being handled by this process.")
DNSSEC_LOOKUPS = Counter(
    "acme_ra_validator_dnssec_lookups_total",
    "DNSSEC-checked lookups (TXT, CAA) by outcome: secure, insecure, bogus, refused (an unsigned "
    "answer under require-signed, or resolvers not validating).",
    ["outcome"],
)
DNSSEC_RESOLVERS_NOT_VALIDATING = Gauge(
    "acme_ra_validator_dnssec_resolvers_not_validating",
    "1 while the last check found a resolver that does not validate DNSSEC (DNSSEC lookups fail), else 0.",
)


def type_label(challenge_type: str) -> str:
    return challenge_type if challenge_type in CHALLENGE_TYPES else "other"


def exposition() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
