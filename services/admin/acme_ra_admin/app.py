"""The admin service's FastAPI app: the API under /api/, the web console, /healthz and /readyz.

It listens on ACME_RA_ADMIN_LISTEN, never on the public ACME port. The database is required;
NATS (revocation, queue backlog) is connected in the background, so the console works while
NATS is down and says so where it matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from acme_ra.config import Settings
from acme_ra_admin import api, console, console_audit, console_certificates, renewal_routes
from acme_ra_admin.gate import AdminGate
from acme_ra_admin.operations import AdminOperations, OperationError

log = logging.getLogger("acme_ra_admin.app")

# How long /readyz waits for the database before calling it unavailable (seconds).
READY_TIMEOUT_SECONDS = 2.0

PATH_HEALTHZ = "/healthz"
PATH_READYZ = "/readyz"
OPENAPI_PATH = f"{api.PREFIX}/openapi.json"


def create_app(settings: Settings, ops: AdminOperations | None = None) -> FastAPI:
    """``ops`` (tests): operations to use instead of ones built from ``settings``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        operations = ops or AdminOperations.from_settings(settings)
        operations.nats.start()
        app.state.ops = operations
        app.state.session_key = console.session_key(operations.settings.sealing_secret())
        app.state.trusted_proxies = console.trusted_networks(operations.settings.trusted_proxies)
        try:
            yield
        finally:
            if ops is None:
                await operations.close()

    app = FastAPI(
        title="acme-ra admin API",
        version="1",
        description="Accounts, EAB keys, orders, certificates, upstream and queue status of an acme-ra "
        "Registration Authority. Every /api/ route wants `Authorization: Bearer <token>`; make a "
        "token with `acme-ra admin-token create`.",
        lifespan=lifespan,
        openapi_url=OPENAPI_PATH,
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(OperationError, _operation_error)  # type: ignore[arg-type]
    app.add_exception_handler(console.LoginRequired, _login_required)
    app.add_exception_handler(SQLAlchemyError, _database_error)  # type: ignore[arg-type]
    app.add_exception_handler(OSError, _database_error)  # type: ignore[arg-type]  # asyncpg's refused connect
    app.add_middleware(AdminGate, openapi_path=OPENAPI_PATH)  # size and authentication before any body
    app.include_router(api.router)
    app.include_router(console.router)
    app.include_router(console_certificates.router)
    app.include_router(console_audit.router)
    app.include_router(renewal_routes.api_router)  # renew-early, CA switch progress
    app.include_router(renewal_routes.console_router)
    app.add_api_route(PATH_HEALTHZ, healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route(PATH_READYZ, readyz, methods=["GET"], include_in_schema=False)
    return app


async def _login_required(_request: Request, _error: Exception) -> Response:
    return console.to_login()


async def _operation_error(_request: Request, error: OperationError) -> JSONResponse:
    return JSONResponse({"detail": error.detail}, status_code=error.status)


async def _database_error(request: Request, error: SQLAlchemyError | OSError) -> JSONResponse:
    """The database failed under a request: 503, its words to the log only."""
    log.warning("admin: the database failed: %s", str(error).splitlines()[0] if str(error) else type(error).__name__,
                extra={"path": request.url.path, "method": request.method})
    return JSONResponse({"detail": "the database is unavailable"}, status_code=503)


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers (NATS is optional: its status is reported)."""
    ops: AdminOperations = request.app.state.ops
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), ops.db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:  # noqa: BLE001 - reported; the driver's text to the log only
        log.warning("readiness: the database does not answer: %s", str(error) or type(error).__name__)
        return JSONResponse({"status": "unavailable", "failed": {"database": "unavailable"}}, status_code=503)
    nats = "connected" if ops.nats.client is not None and ops.nats.client.is_connected else (
        "not configured" if not ops.nats.configured else "not connected")
    return JSONResponse({"status": "ready", "nats": nats})
