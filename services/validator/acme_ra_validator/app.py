"""The validator's FastAPI app: /healthz, /readyz, /metrics, and the NATS consumer in the lifespan.

Every replica joins the one durable consumer ``bus.DURABLE_VALIDATOR``; JetStream hands each job
to one of them and redelivers it if that replica dies before acking.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from acme_ra import bus
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra_validator import metrics
from acme_ra_validator.http01 import new_http_client
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.worker import ChallengeValidator

log = logging.getLogger("acme_ra_validator.app")

# How long /readyz waits for the database to answer (seconds).
READY_DB_TIMEOUT_SECONDS = 2.0
# Jobs handled at once by one replica.
CONSUMER_CONCURRENCY = 16


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.effective_database_url, settings.db_pool_size)
        http = new_http_client()
        nc = None
        try:
            nc = await bus.connect(settings.nats_url, "acme-ra-validator")
            js = nc.jetstream()
            await bus.ensure_streams(js)
            validator = ChallengeValidator(
                db,
                http,
                NameResolver(settings.resolver_addresses),
                http_port=settings.validation_http_port,
                authz_lifetime=dt.timedelta(seconds=settings.authz_lifetime_seconds),
                js=js,
            )
            stop = asyncio.Event()
            consumer = asyncio.create_task(
                bus.consume(
                    js,
                    bus.SUBJECT_VALIDATE,
                    bus.DURABLE_VALIDATOR,
                    bus.ValidateJob,
                    validator.handle,
                    stop,
                    concurrency=CONSUMER_CONCURRENCY,
                ),
                name="validate-consumer",
            )
            consumer.add_done_callback(_report_consumer_exit)
            app.state.db, app.state.nc, app.state.consumer = db, nc, consumer
            log.info("validator started", extra={"listen": settings.validator_listen})
            yield
            stop.set()
            await asyncio.wait([consumer])  # bus.consume waits for its running jobs
        finally:
            if nc is not None:
                await nc.close()
            await http.aclose()
            await db.dispose()

    app = FastAPI(title="acme-ra validator", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        checks = {
            "database": "ok" if await _database_answers(request.app.state.db) else "unavailable",
            "nats": "ok" if request.app.state.nc.is_connected else "disconnected",
            "consumer": "stopped" if request.app.state.consumer.done() else "ok",
        }
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return app


async def _database_answers(db: Database) -> bool:
    try:
        async with asyncio.timeout(READY_DB_TIMEOUT_SECONDS), db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False


def _report_consumer_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("validation consumer stopped", exc_info=task.exception())
