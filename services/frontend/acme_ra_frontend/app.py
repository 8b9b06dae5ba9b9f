"""The frontend's FastAPI app: its lifespan, the route table mounted (routes.py), the middleware."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator

import nats.errors
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from acme_ra import bus, natsauth, telemetry
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.protocol.policy import Policy, parse_rules
from acme_ra.redaction import mask_url
from acme_ra.sealing import Sealer, SealError
from acme_ra_frontend import metrics
from acme_ra_frontend.client_networks import ClientNetworkGate, ClientNetworkWatch
from acme_ra_frontend.errors import handle_http_error
from acme_ra_frontend.headers import AcmeHeaders, new_nonce_links
from acme_ra_frontend.http_limits import BodyLimit
from acme_ra_frontend.nonces import NonceService, load_or_create_key
from acme_ra_frontend.ratelimits import purge_old_counters
from acme_ra_frontend.reconciler import reconcile_forever
from acme_ra_frontend.routes import ROUTES
from acme_ra_frontend.routing import mount
from acme_ra_frontend.state import FrontendState
from acme_ra_frontend.urls import Urls

log = logging.getLogger("acme_ra.frontend")

# How long start-up waits for NATS before giving up (a supervisor restarts the process).
NATS_START_TIMEOUT = 30
# How often expired redeemed nonces are deleted (seconds).
NONCE_PURGE_INTERVAL = 300
# How long shutdown waits for the cancelled background tasks (seconds).
BACKGROUND_STOP_TIMEOUT = 5


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.effective_database_url, settings.db_pool_size)
        try:
            nc = await asyncio.wait_for(bus.connect(settings.nats_url, "acme-ra-frontend",
                                                natsauth.connect_options(settings, "frontend")), NATS_START_TIMEOUT)
        except (TimeoutError, OSError, nats.errors.NoServersError) as error:
            log.error("cannot reach NATS at ACME_RA_NATS_URL=%s within %s s: %s",
                      mask_url(settings.nats_url), NATS_START_TIMEOUT, type(error).__name__)
            await db.dispose()
            raise SystemExit(3) from None
        js = nc.jetstream()
        await bus.ensure_streams(js, settings.nats_stream_replicas)
        sealer = Sealer(settings.sealing_secret())
        try:
            nonce_key = await load_or_create_key(db, sealer)
        except SealError as error:  # another ACME_RA_SECRET_KEY sealed it: say so in one line
            log.error("cannot open the shared nonce key (server_keys): %s", error)
            await nc.close()
            await db.dispose()
            raise SystemExit(3) from None
        nonces = NonceService(nonce_key, settings.nonce_lifetime_seconds)
        policy = Policy(parse_rules(settings.policy_allow), parse_rules(settings.policy_deny), settings.policy_wildcards)
        state = FrontendState(settings, db, nc, js, nonces, sealer, policy)
        state.urls = {p: Urls(settings.external_url, p) for p in settings.provisioner_names}
        state.new_nonce_links = new_nonce_links(state)
        state.trusted_proxies = [
            ipaddress.ip_network(v.strip(), strict=False) for v in settings.trusted_proxies.split(",") if v.strip()
        ]
        await state.work_events.start(nc)
        app.state.ra = state
        background = [
            asyncio.create_task(purge_nonces_forever(db)),
            asyncio.create_task(reconcile_forever(state)),
            asyncio.create_task(state.outbox.run()),
            asyncio.create_task(metrics.refresh_forever(state)),
        ]
        tls_watch = getattr(app.state, "tls_watch", None)
        if tls_watch is not None:
            background.append(asyncio.create_task(tls_watch.run_forever()))
        background.append(asyncio.create_task(app.state.client_networks.run_forever()))
        log.info("frontend ready", extra={"directory": state.urls[settings.provisioner_names[0]].directory})
        try:
            yield
        finally:
            state.stopping = True
            for task in background:
                task.cancel()
            # Let them finish before the pool closes: a task cancelled inside a query hands its
            # connection back (or closes it) now; after dispose() aiosqlite's close never returns.
            await asyncio.wait(background, timeout=BACKGROUND_STOP_TIMEOUT)
            await state.work_events.stop()
            await nc.drain()
            await db.dispose()
            telemetry.shutdown_tracing()  # export the spans still batched

    app = FastAPI(title="acme-ra", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.direct_routes = mount(app, ROUTES)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_middleware(AcmeHeaders)
    # A body over the cap is refused before any other work (direct routes included).
    app.add_middleware(BodyLimit, max_bytes=settings.http_max_body_bytes)
    # Outermost: an address in no client network is refused before anything else runs.
    app.state.client_networks = ClientNetworkWatch(settings)  # raises ClientNetworksError
    app.add_middleware(ClientNetworkGate, watch=app.state.client_networks)
    return app


async def purge_nonces_forever(db: Database) -> None:
    while True:
        await asyncio.sleep(NONCE_PURGE_INTERVAL)
        try:
            await NonceService.purge_expired(db)
            async with db.transaction() as session:
                await purge_old_counters(session)
        except Exception as error:  # noqa: BLE001 - try again next time
            log.warning("nonce purge failed: %s", error)
