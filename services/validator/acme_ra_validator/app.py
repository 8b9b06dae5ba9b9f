"""The validator's FastAPI app: /healthz, /readyz, /metrics, and the NATS consumer in the lifespan.

Every replica joins the one durable consumer ``bus.DURABLE_VALIDATOR``; JetStream hands each job
to one of them and redelivers it if that replica dies before acking.

NATS is joined in the background: the HTTP endpoints answer at once (/readyz says 503 until the
consumer runs), and SIGTERM stops a validator that is still waiting for NATS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from nats.aio.client import Client as NATS
from sqlalchemy import text

from acme_ra import bus, natsauth, telemetry
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra_validator import perspective
from acme_ra_validator.caa_recheck import CaaRecheckResponder
from acme_ra_validator.health import add_health_routes
from acme_ra_validator.http01 import new_http_client
from acme_ra_validator.mpic import Corroboration
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.worker import ChallengeValidator, ValidationOptions

log = logging.getLogger("acme_ra_validator.app")

# How long /readyz waits for the database to answer (seconds).
READY_DB_TIMEOUT_SECONDS = 2.0
# Jobs handled at once by one replica.
CONSUMER_CONCURRENCY = 16
# Wait between two attempts to create the JetStream streams (e.g. JetStream not enabled yet).
STREAM_SETUP_RETRY_SECONDS = 2.0
# Wait between two cancels of a consumer task that is still connecting.
CANCEL_RETRY_SECONDS = 0.2


@dataclass
class ConsumerState:
    """What /readyz reports about the bus side."""

    nc: NATS | None = None
    consuming: bool = False
    task: asyncio.Task[None] | None = None

    def checks(self) -> dict[str, str]:
        if self.nc is None:
            nats_state = "connecting"
        else:
            nats_state = "ok" if self.nc.is_connected else "disconnected"
        if self.task is not None and self.task.done():
            consumer_state = "stopped"
        else:
            consumer_state = "ok" if self.consuming else "starting"
        return {"nats": nats_state, "consumer": consumer_state}


async def run_consumer(
    settings: Settings, validator: ChallengeValidator, state: ConsumerState, stop: asyncio.Event
) -> None:
    """Connect (retrying forever), set up the streams, then consume until ``stop``."""
    state.nc = await bus.connect(settings.nats_url, "acme-ra-validator", natsauth.connect_options(settings, "validator"))
    js = state.nc.jetstream()
    while True:
        try:
            await bus.wait_for_consumer(js, bus.DURABLE_VALIDATOR)  # the frontend or signer makes it
            break
        except Exception as error:  # noqa: BLE001 - retried; /readyz says "starting" meanwhile
            log.warning("JetStream streams not ready: %s", error)
            await asyncio.sleep(STREAM_SETUP_RETRY_SECONDS)
    validator.nc = state.nc
    if validator.corroboration is not None:  # MPIC: live perspectives from their heartbeats
        await validator.corroboration.subscribe(state.nc)
    # CAA re-checks at finalization (acme.rpc.caa); the subscription ends with the connection.
    await CaaRecheckResponder(validator.resolver, validator.options.caa_identities).subscribe(state.nc)
    state.consuming = True
    log.info("consuming validation jobs", extra={"durable": bus.DURABLE_VALIDATOR})
    await bus.consume(
        js,
        bus.SUBJECT_VALIDATE,
        bus.DURABLE_VALIDATOR,
        bus.ValidateJob,
        validator.handle,
        stop,
        concurrency=CONSUMER_CONCURRENCY,
    )


def create_app(settings: Settings) -> FastAPI:
    if settings.validator_role == "remote":  # a network perspective: NATS only (perspective.py)
        return perspective.create_app(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.effective_database_url, settings.db_pool_size)
        http = new_http_client()
        resolver = NameResolver.from_settings(settings)
        dnssec_watch = None
        if resolver.dnssec.enabled:  # checked at start-up by __main__; again here, then every 5 minutes
            await resolver.check_dnssec()
            dnssec_watch = asyncio.create_task(resolver.watch_dnssec(), name="dnssec-watch")
        validator = ChallengeValidator(
            db,
            http,
            resolver,
            ValidationOptions.from_settings(settings),
            authz_lifetime=dt.timedelta(seconds=settings.authz_lifetime_seconds),
        )
        if settings.mpic_remote_perspectives > 0:
            validator.corroboration = Corroboration(settings)
        state = ConsumerState()
        stop = asyncio.Event()
        state.task = asyncio.create_task(run_consumer(settings, validator, state, stop), name="validate-consumer")
        state.task.add_done_callback(_report_consumer_exit)
        app.state.db, app.state.consumer, app.state.resolver = db, state, resolver
        log.info("validator started", extra={"listen": settings.validator_listen})
        try:
            yield
        finally:
            stop.set()
            if state.consuming:
                await asyncio.wait([state.task])  # bus.consume waits for its running jobs
            else:
                await _cancel(state.task)  # still connecting or setting up: nothing in flight
            if dnssec_watch is not None:
                await _cancel(dnssec_watch)
            if state.nc is not None:
                await state.nc.close()
            await http.aclose()
            await db.dispose()
            if telemetry.tracing_enabled():
                telemetry.shutdown_tracing()  # flush batched spans: uvicorn re-raises SIGTERM next

    app = FastAPI(title="acme-ra validator", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    async def checks(request: Request) -> dict[str, str]:
        found = {"database": "ok" if await _database_answers(request.app.state.db) else "unavailable"}
        found.update(request.app.state.consumer.checks())
        resolver: NameResolver = request.app.state.resolver
        if resolver.dnssec.enabled:
            found["dnssec"] = "ok" if resolver.dnssec_refusal is None else "resolvers not validating"
        return found

    add_health_routes(app, checks)
    return app


async def _database_answers(db: Database) -> bool:
    try:
        async with asyncio.timeout(READY_DB_TIMEOUT_SECONDS), db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel until done: on Python 3.11 a cancel that races a failed connect inside
    ``asyncio.wait_for`` is lost, and nats-py would go on reconnecting forever."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_RETRY_SECONDS)


def _report_consumer_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("validation consumer stopped", exc_info=task.exception())
