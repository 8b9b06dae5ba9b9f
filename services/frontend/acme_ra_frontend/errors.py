"""The one error path: every error a request meets becomes a problem document (RFC 7807,
``application/problem+json``), never a stack trace.

Endpoints are wrapped in ``guarded``, so the error is rendered inside the app and the ACME
headers (``headers.AcmeHeaders``) are added to it; the router's own 404 and 405 reach
``handle_http_error``; both render through ``error_response``.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg.exceptions
import nats.errors
import orjson
import sqlalchemy.exc
from fastapi import Request
from fastapi.responses import Response

from acme_ra.protocol.problems import Problem, method_not_allowed, server_internal
from acme_ra_frontend import metrics
from acme_ra_frontend.context import Endpoint

log = logging.getLogger("acme_ra.frontend")

PROBLEM_CONTENT_TYPE = "application/problem+json"

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
    # A failover under way: the server this connection had is a standby now, or none of the
    # URL's hosts takes writes yet (acme_ra.db.multihost, target_session_attrs=read-write).
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
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


def problem_response(problem: Problem) -> Response:
    metrics.PROBLEMS.labels(problem.type).inc()
    return Response(orjson.dumps(problem.to_dict()), problem.status, problem.headers, PROBLEM_CONTENT_TYPE)


def error_response(request: Request, error: Exception) -> Response:
    """The problem document for any error raised while answering ``request``."""
    if isinstance(error, Problem):
        return problem_response(error)
    if not is_unavailable(error):
        log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return problem_response(Problem("serverInternal", "internal error; try again later",
                                        headers={"Retry-After": "60"}))
    log.warning("dependency unavailable on %s %s: %s", request.method, request.url.path, type(error).__name__)
    return problem_response(Problem("serverInternal", "the service is briefly unavailable; try again shortly", 503,
                                    headers={"Retry-After": "5"}))


def guarded(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` with every error it raises rendered by ``error_response``."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as error:  # noqa: BLE001 - rendered as a problem document
            return error_response(request, error)

    run.__name__ = endpoint.__name__
    return run


async def handle_http_error(_request: Request, error: Any) -> Response:
    """The router's own refusals: no such path (404), a method the path does not take (405)."""
    status = getattr(error, "status_code", 500)
    if status == 405:
        allowed = (getattr(error, "headers", None) or {}).get("Allow", "POST")
        return problem_response(method_not_allowed([m.strip() for m in allowed.split(",")]))
    if status == 404:
        return problem_response(Problem("malformed", "no such resource", 404))
    if status >= 500:
        return problem_response(server_internal())
    return problem_response(Problem("malformed", str(getattr(error, "detail", "bad request")), status))
