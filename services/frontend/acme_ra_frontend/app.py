"""The frontend's FastAPI app: lifespan, the one route table, error rendering."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg.exceptions
import nats.errors
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from acme_ra import bus, natsauth, telemetry
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.protocol.policy import Policy, parse_rules
from acme_ra.protocol.problems import Problem
from acme_ra.redaction import mask_url
from acme_ra.sealing import Sealer, SealError
from acme_ra_frontend import (
    accounts,
    authz,
    directory,
    health,
    metrics,
    orders,
    queries,
    renewal_info,
    revocation,
    urls,
)
from acme_ra_frontend.client_networks import ClientNetworkGate, ClientNetworkWatch
from acme_ra_frontend.http_limits import BodyLimit
from acme_ra_frontend.nonces import NonceService, load_or_create_key
from acme_ra_frontend.plumbing import (
    AcmeHeaders,
    Atomicity,
    Auth,
    Handler,
    acme_post,
    direct_routes,
    handle_http_error,
    handle_problem,
    new_nonce_links,
    problem_response,
)
from acme_ra_frontend.ratelimits import purge_old_counters
from acme_ra_frontend.reconciler import reconcile_forever
from acme_ra_frontend.state import FrontendState
from acme_ra_frontend.urls import Urls

log = logging.getLogger("acme_ra.frontend")

# How long start-up waits for NATS before giving up (a supervisor restarts the process).
NATS_START_TIMEOUT = 30
# How often expired redeemed nonces are deleted (seconds).
NONCE_PURGE_INTERVAL = 300
# How long shutdown waits for the cancelled background tasks (seconds).
BACKGROUND_STOP_TIMEOUT = 5

# The route table: path, handler, who signs. Requests that lead to issuance need the account's
# agreement to the current terms of service (accounts.requires_current_terms).
POST_ROUTES: list[tuple[str, Handler, Auth]] = [
    (urls.NEW_NONCE, directory.new_nonce_post, Auth.KID),
    (urls.NEW_ACCOUNT, accounts.new_account, Auth.JWK),
    (urls.ACCOUNT, accounts.account, Auth.KID),
    (urls.ACCOUNT_ORDERS, accounts.account_orders, Auth.KID),
    (urls.NEW_ORDER, accounts.requires_current_terms(orders.new_order), Auth.KID),
    (urls.ORDER, orders.order, Auth.KID),
    (urls.FINALIZE, accounts.requires_current_terms(orders.finalize), Auth.KID),
    (urls.AUTHZ, authz.authorization, Auth.KID),
    (urls.CHALLENGE, accounts.requires_current_terms(authz.challenge), Auth.KID),
    (urls.CERTIFICATE, orders.certificate, Auth.KID),
    (urls.CERTIFICATE_ALTERNATE, orders.certificate, Auth.KID),
    (urls.KEY_CHANGE, accounts.key_change, Auth.KID),
    (urls.REVOKE_CERT, revocation.revoke_cert, Auth.EITHER),
]
# Handlers that need no transaction, always or when the request is POST-as-GET (acme_post).
ATOMICITY: dict[Handler, Atomicity] = {
    **{handler: Atomicity.NONE_FOR_POST_AS_GET for handler in (
        accounts.account, accounts.account_orders, orders.order, authz.authorization, orders.certificate)},
    authz.challenge: Atomicity.NONE,
    orders.new_order: Atomicity.NONE,
    orders.finalize: Atomicity.NONE,
}
# The resource each handler reads first, by the path parameter naming it: outside a transaction
# it is read in the statement that authenticates the request (plumbing.authenticate_outside_transaction).
READS: dict[Handler, queries.Read] = {
    authz.authorization: queries.AUTHZ_READ,
    authz.challenge: queries.AUTHZ_READ,
    orders.order: queries.ORDER_READ,
    orders.finalize: queries.ORDER_READ,
    orders.certificate: queries.CERTIFICATE_READ,
}
GET_ROUTES: list[tuple[str, Callable[[Request], Awaitable[Response]]]] = [
    (urls.DIRECTORY, directory.directory),
    (urls.NEW_NONCE, directory.new_nonce),
    (urls.RENEWAL_INFO, renewal_info.renewal_info),
    (urls.RENEWAL_INFO_BASE, renewal_info.renewal_info),
    (urls.RENEWAL_INFO + "/", renewal_info.renewal_info),  # a trailing slash is accepted too
]


# A database or NATS outage is not a bug: clients get 503 + Retry-After, not a 500.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.TimeoutError,
)


_DRIVER_OUTAGES = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, admin shutdown
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


def is_unavailable(error: BaseException) -> bool:
    """A dependency outage (database, NATS) rather than a bug. SQLAlchemy wraps the driver's
    error (``error.orig``), which may wrap asyncpg's own (``__cause__``): look at the chain."""
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UNAVAILABLE_ERRORS + _DRIVER_OUTAGES) or "database is locked" in str(current):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def guarded(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Every error becomes a problem document inside the app, so the ACME headers are added."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Problem as problem:
            return problem_response(problem)
        except Exception as error:
            if not is_unavailable(error):
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return problem_response(Problem("serverInternal", "internal error; try again later",
                                                headers={"Retry-After": "60"}))
            log.warning("dependency unavailable on %s %s: %s", request.method, request.url.path, type(error).__name__)
            return problem_response(
                Problem("serverInternal", "the service is briefly unavailable; try again shortly", 503,
                        headers={"Retry-After": "5"})
            )

    return run


def post_endpoint(handler: Handler, auth: Auth) -> Callable[[Request], Awaitable[Response]]:
    inner = inspect.unwrap(handler)  # the handler itself under a wrapper (requires_current_terms)
    atomicity = ATOMICITY.get(inner, Atomicity.TRANSACTION)
    read = READS.get(inner)

    async def endpoint(request: Request) -> Response:
        return await acme_post(request, handler, auth, atomicity, read)

    endpoint.__name__ = handler.__name__
    return guarded(endpoint)


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
        await bus.ensure_streams(js)
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
    acme_endpoints = set()
    for path, handler, auth in POST_ROUTES:
        endpoint = post_endpoint(handler, auth)
        acme_endpoints.add(endpoint)
        app.add_api_route(path, endpoint, methods=["POST"])
    for path, get_handler in GET_ROUTES:
        app.add_api_route(path, guarded(get_handler), methods=["GET", "HEAD"])
    # POST-as-GET of the directory (RFC 8555 §6.3); a plain POST there is a 405.
    app.add_api_route(urls.DIRECTORY, guarded(directory.directory_post), methods=["POST"])
    # Where a person agrees to changed terms of service (a plain web page and its form).
    app.add_api_route(accounts.TERMS_AGREEMENT, guarded(accounts.terms_agreement), methods=["GET", "HEAD", "POST"])
    app.add_api_route("/healthz", health.healthz, methods=["GET", "HEAD"])
    app.add_api_route("/readyz", health.readyz, methods=["GET", "HEAD"])
    app.state.direct_routes = direct_routes(app.router.routes, acme_endpoints)
    app.add_exception_handler(Problem, handle_problem)
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
