"""Prometheus metrics of the frontend, served on ACME_RA_METRICS_LISTEN (never the ACME port).

Labels are bounded: route templates, methods, status codes, order statuses. Never a domain,
serial number or account id.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from acme_ra import bus
from acme_ra.config import parse_host_port
from acme_ra_frontend.repo import nonces as repo_nonces
from acme_ra_frontend.repo import orders as repo_orders
from acme_ra_frontend.state import FrontendState
from acme_ra_frontend.urls import NEW_NONCE

log = logging.getLogger("acme_ra.frontend.metrics")

# How often database and JetStream figures are refreshed (seconds).
REFRESH_INTERVAL = 15

HTTP_REQUESTS = Counter(
    "acme_ra_http_requests_total", "ACME HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "acme_ra_http_request_duration_seconds", "ACME HTTP request latency by route template.",
    ["route", "method"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# HEAD/GET newNonce are answered before routing (headers.AcmeHeaders): counted, not timed.
NEW_NONCE_HEAD = HTTP_REQUESTS.labels(NEW_NONCE, "HEAD", "200")
NEW_NONCE_GET = HTTP_REQUESTS.labels(NEW_NONCE, "GET", "204")
# Figures of the whole system, refreshed by every frontend worker: with several workers
# (ACME_RA_FRONTEND_WORKERS) the most recent value is the figure, not one per worker.
# Open orders only: counting the finished ones would read the whole (ever larger) table each
# refresh; acme_ra_certificates_issued_total (signer) counts what was issued.
OPEN_STATUSES = ("pending", "ready", "processing")
ORDERS = Gauge("acme_ra_orders", "Open orders in the database by status (pending, ready, processing).", ["status"],
               multiprocess_mode="mostrecent")
JOBS_PENDING = Gauge("acme_ra_jobs_pending", "JetStream jobs not yet delivered, by consumer.", ["consumer"],
                     multiprocess_mode="mostrecent")
JOBS_UNACKED = Gauge("acme_ra_jobs_unacknowledged", "JetStream jobs delivered but not acknowledged, by consumer.",
                     ["consumer"], multiprocess_mode="mostrecent")
NONCES_REDEEMED = Gauge("acme_ra_nonces_redeemed", "Redeemed nonces kept until they expire (the nonce store).",
                        multiprocess_mode="mostrecent")
PROBLEMS = Counter("acme_ra_problems_total", "Problem documents sent, by type.", ["type"])


def start_metrics_server(listen: str, multiprocess_dir: Path | None = None) -> None:
    """/metrics on ``listen``; with ``multiprocess_dir``, the sum of every worker's files there."""
    host, port = parse_host_port(listen)
    if multiprocess_dir is None:
        start_http_server(port, addr=host.strip("[]"))
        return
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(multiprocess_dir))  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host.strip("[]"), registry=registry)


async def refresh_once(state: FrontendState) -> None:
    async with state.db.sessions() as session:
        rows = await repo_orders.count_open_by_status(session, OPEN_STATUSES)
        nonces = await repo_nonces.count_redeemed(session)
    for status in OPEN_STATUSES:
        ORDERS.labels(status).set(0)
    for status, count in rows:
        ORDERS.labels(status).set(count)
    NONCES_REDEEMED.set(nonces)
    for durable in (bus.DURABLE_VALIDATOR, bus.DURABLE_SIGNER):
        info = await state.js.consumer_info(bus.JOBS_STREAM, durable)
        JOBS_PENDING.labels(durable).set(info.num_pending or 0)
        JOBS_UNACKED.labels(durable).set(info.num_ack_pending or 0)


async def refresh_forever(state: FrontendState) -> None:
    while True:
        try:
            await refresh_once(state)
        except Exception as error:  # noqa: BLE001 - figures are advisory
            log.warning("metrics refresh failed: %s", error)
        await asyncio.sleep(REFRESH_INTERVAL)
