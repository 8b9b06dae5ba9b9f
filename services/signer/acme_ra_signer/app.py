"""The signer's FastAPI app: /healthz, /readyz, /metrics, and the issue consumer in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from acme_ra import bus, natsauth, telemetry
from acme_ra.config import Settings
from acme_ra.db import inventory
from acme_ra.db.engine import Database
from acme_ra.redaction import mask_url
from acme_ra_signer import expiry, metrics, purger
from acme_ra_signer.renewal_relay import RenewalRelay
from acme_ra_signer.revoker import RevokeResponder
from acme_ra_signer.upstream import UpstreamDriver, make_driver
from acme_ra_signer.worker import IssueWorker

log = logging.getLogger("acme_ra_signer.app")

# How long /readyz waits for each dependency before calling it failed (seconds).
READY_CHECK_TIMEOUT_SECONDS = 5.0
# Pause before the issue consumer is restarted after it failed (seconds).
CONSUMER_RESTART_SECONDS = 1.0
# How long shutdown waits for NATS to take the last acks (seconds).
FLUSH_TIMEOUT_SECONDS = 5

PATH_HEALTHZ = "/healthz"
PATH_READYZ = "/readyz"
PATH_METRICS = "/metrics"
PATH_UPSTREAMS = "/upstreams"


@dataclass
class Runtime:
    """What the lifespan builds and the routes read."""

    driver: UpstreamDriver
    db: Database
    nc: NATS
    js: JetStreamContext
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    consumer: asyncio.Task[None] | None = None
    revoker: RevokeResponder | None = None
    revoke_subscription: Subscription | None = None
    warm_up: asyncio.Task[None] | None = None
    tls_renewal: asyncio.Task[None] | None = None
    purger: asyncio.Task[None] | None = None
    expiry: asyncio.Task[None] | None = None
    relay: RenewalRelay | None = None  # ARI relayed: the upstreams' renewal windows
    relay_task: asyncio.Task[None] | None = None
    config_watch: asyncio.Task[None] | None = None  # the upstream lists follow ACME_RA_CONFIG_FILE


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await start(settings)
        app.state.runtime = runtime
        try:
            yield
        finally:
            app.state.runtime = None
            await stop(runtime)
            if telemetry.tracing_enabled():
                telemetry.shutdown_tracing()  # flush batched spans: uvicorn re-raises SIGTERM next

    app = FastAPI(title="acme-ra signer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = None
    app.add_api_route(PATH_HEALTHZ, healthz, methods=["GET"])
    app.add_api_route(PATH_READYZ, readyz, methods=["GET"])
    app.add_api_route(PATH_METRICS, metrics_endpoint, methods=["GET"])
    app.add_api_route(PATH_UPSTREAMS, upstreams_endpoint, methods=["GET"])
    return app


async def start(settings: Settings) -> Runtime:
    """Database, driver (the lab CA loaded or created; the acme upstreams configured), NATS,
    streams, the issue consumer and the revoke responder; the upstream account is registered
    in the background (start-up never waits for the upstream)."""
    db = Database(settings.effective_database_url, settings.db_pool_size)
    try:
        driver = await asyncio.to_thread(make_driver, settings, db)
    except BaseException:
        await db.dispose()
        raise
    try:
        nc = await bus.connect(settings.nats_url, "acme-ra-signer", natsauth.connect_options(settings, "signer"))
    except BaseException:
        await db.dispose()
        await driver.close()
        raise
    js = nc.jetstream()
    runtime = Runtime(driver=driver, db=db, nc=nc, js=js)
    try:
        await bus.ensure_streams(js, replicas=settings.stream_replicas)
    except BaseException:
        await stop(runtime)
        raise
    if settings.upstream == "acme":
        runtime.relay = RenewalRelay(db, driver, settings.upstream_ari_poll_seconds)
        runtime.relay_task = asyncio.create_task(runtime.relay.relay_forever(runtime.stop), name="ari-relay")
    worker = IssueWorker(db, driver, nc, relay=runtime.relay)
    runtime.consumer = asyncio.create_task(_consume(runtime, worker), name="issue-consumer")
    runtime.revoker = RevokeResponder(db, driver, js)
    try:
        runtime.revoke_subscription = await runtime.revoker.subscribe(nc)
    except BaseException:
        await stop(runtime)
        raise
    runtime.warm_up = asyncio.create_task(_warm_up(driver), name="upstream-warm-up")
    upstream_names = [entry["name"] for entry in driver.describe()] or [inventory.NO_UPSTREAM]
    runtime.expiry = asyncio.create_task(expiry.refresh_forever(db, upstream_names, runtime.stop), name="expiry-gauges")
    if settings.retention_days:
        purging = purger.purge_forever(db, settings.retention_days, runtime.stop, settings.purge_share)
        runtime.purger = asyncio.create_task(purging, name="retention-purge")
    if settings.upstream == "acme" and settings.config_file is not None:
        from acme_ra_signer.config_watch import ConfigWatch
        from acme_ra_signer.upstream.failover import AcmeDriver

        assert isinstance(driver, AcmeDriver)
        runtime.config_watch = asyncio.create_task(ConfigWatch(settings, driver).run_forever(runtime.stop),
                                                   name="config-watch")
    if settings.upstream == "acme" and settings.tls_cert_file is None:
        from acme_ra_signer import frontend_tls
        from acme_ra_signer.upstream.failover import AcmeDriver

        assert isinstance(driver, AcmeDriver)
        runtime.tls_renewal = asyncio.create_task(
            frontend_tls.renew_forever(settings, driver, runtime.stop), name="frontend-tls-renewal"
        )
    log.info("signer started", extra={"upstream": settings.upstream, "listen": settings.signer_listen})
    return runtime


async def stop(runtime: Runtime) -> None:
    """Finish the jobs in hand, then close NATS, the database and the driver."""
    runtime.stop.set()
    for task in (runtime.warm_up, runtime.tls_renewal, runtime.purger, runtime.expiry, runtime.relay_task,
                 runtime.config_watch):
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if runtime.revoke_subscription is not None:
        with contextlib.suppress(Exception):
            await runtime.revoke_subscription.unsubscribe()
    if runtime.consumer is not None:
        await runtime.consumer
    if runtime.revoker is not None:
        await runtime.revoker.wait_idle(FLUSH_TIMEOUT_SECONDS)
    # Flush (the last acks and events), then close. Not drain(): with the consumer's pull
    # subscription still registered, nats-py's drain waits out its whole timeout.
    if runtime.nc.is_connected:
        with contextlib.suppress(Exception):
            await runtime.nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)
    with contextlib.suppress(Exception):
        await runtime.nc.close()
    if runtime.relay is not None:
        await runtime.relay.close()
    await runtime.db.dispose()
    await runtime.driver.close()


async def _warm_up(driver: UpstreamDriver) -> None:
    """Check the upstream once at start (registering the ACME account if needed), so that a
    refused EAB key shows in the log at once, naming the setting to fix; /readyz repeats it."""
    try:
        with metrics.upstream_call("check"):
            await driver.check()
    except Exception as error:  # noqa: BLE001 - reported, and /readyz keeps reporting it
        log.error("upstream not ready: %s", error, extra={"upstream": driver.name})
    else:
        log.info("upstream ready", extra={"upstream": driver.name})


async def _consume(runtime: Runtime, worker: IssueWorker) -> None:
    """Run the issue consumer until shutdown, restarting it if it fails."""
    while not runtime.stop.is_set():
        try:
            await bus.consume(
                runtime.js, bus.SUBJECT_ISSUE, bus.DURABLE_SIGNER, bus.IssueJob, worker.handle, runtime.stop
            )
        except Exception:
            log.exception("issue consumer failed; restarting")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(runtime.stop.wait(), CONSUMER_RESTART_SECONDS)


async def healthz() -> dict[str, str]:
    """The process is alive (no dependency is checked)."""
    return {"status": "ok"}


async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers, NATS is connected, the consumer runs and the upstream
    is usable; otherwise 503 naming what failed. Either way, with several upstreams, each one's
    circuit breaker (state, failures in a row, last error, next probe)."""
    runtime: Runtime | None = request.app.state.runtime
    if runtime is None:
        return JSONResponse({"status": "unavailable", "failed": {"signer": "starting"}}, status_code=503)
    results = await asyncio.gather(
        _check("database", _database_ok(runtime.db)),
        _check("nats", _nats_ok(runtime.nc)),
        _check("consumer", _consumer_ok(runtime.consumer)),
        _check("upstream", _upstream_ok(runtime.driver)),
    )
    failed = {name: error for name, error in results if error is not None}
    # Each upstream's circuit breaker (ACME_RA_UPSTREAM=acme): which upstreams orders go to now.
    breakers = {entry["name"]: entry["breaker"] for entry in runtime.driver.describe() if "breaker" in entry}
    detail = {"upstreams": breakers} if breakers else {}
    if failed:
        return JSONResponse({"status": "unavailable", "failed": failed, **detail}, status_code=503)
    return JSONResponse({"status": "ready", **detail})


async def upstreams_endpoint(request: Request) -> JSONResponse:
    """The upstreams this signer runs with (strategy, DNS publisher; never a secret), for
    ``acme-ra upstream status`` and the console; on the internal listener, beside /metrics."""
    runtime: Runtime | None = request.app.state.runtime
    if runtime is None:
        return JSONResponse({"upstreams": []}, status_code=503)
    return JSONResponse({"upstreams": runtime.driver.describe()})


async def metrics_endpoint() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _check(name: str, check: Awaitable[None]) -> tuple[str, str | None]:
    try:
        await asyncio.wait_for(check, READY_CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return name, "timed out"
    except Exception as error:  # noqa: BLE001 - reported, not raised
        if name == "database":  # the driver's text names hosts, users, databases: the log only
            log.warning("readiness: the database does not answer: %s", str(error) or type(error).__name__)
            return name, "unavailable"
        return name, mask_url(str(error)) or type(error).__name__
    return name, None


async def _database_ok(db: Database) -> None:
    async with db.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _nats_ok(nc: NATS) -> None:
    if not nc.is_connected:
        raise ConnectionError("not connected")


async def _upstream_ok(driver: UpstreamDriver) -> None:
    with metrics.upstream_call("check"):
        await driver.check()


async def _consumer_ok(consumer: asyncio.Task[None] | None) -> None:
    if consumer is None or consumer.done():
        raise RuntimeError("the issue consumer is not running")
