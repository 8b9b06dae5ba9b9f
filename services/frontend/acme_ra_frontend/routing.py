"""Routing: the route rows' types, the pipeline every ACME POST takes, and how the rows are
mounted on the app.

A row of ``routes.ROUTES`` says everything about its route. An ``AcmeRoute`` is a JWS-signed POST:
``run_acme`` verifies it (verification.py), opens the connection its ``atomicity`` asks for, runs
the handler (in a span that starts a trace when ``starts_trace``), then publishes the handler's
jobs. A ``PageRoute`` is a plain endpoint (the directory, GET newNonce, ARI, health).

ACME POST rows marked ``direct`` are matched by ``headers.AcmeHeaders`` itself and their endpoint
called without FastAPI's router (exception middleware, dependency resolution, route telemetry),
which cost more than a POST-as-GET's own work (docs/design/shortcuts.md: "ACME POSTs without the
router"). The router still holds every row, so a path only it matches, and every other method,
gets its answer (404, 405) there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.routing import compile_path
from starlette.types import Scope

from acme_ra import telemetry
from acme_ra.protocol.problems import Problem
from acme_ra_frontend import accounts
from acme_ra_frontend.context import AcmeCall, Atomicity, Auth, Endpoint, Handler, resolve_provisioner
from acme_ra_frontend.errors import guarded
from acme_ra_frontend.repo import orders as repo_orders
from acme_ra_frontend.repo.reads import Read
from acme_ra_frontend.verification import is_jose, read_jws, verify


@dataclass(frozen=True, slots=True)
class AcmeRoute:
    """A JWS-signed POST route."""

    path: str
    handler: Handler
    auth: Auth = Auth.KID
    atomicity: Atomicity = Atomicity.TRANSACTION
    # The resource the handler reads first (keyed by its path parameter), read in the statement
    # that authenticates the request where the database can (repo.authentication).
    read: Read | None = None
    # The account must have agreed to the current terms of service (accounts.check_current_terms):
    # the requests that lead to issuance.
    needs_current_terms: bool = False
    # Its span starts a new trace (newOrder); others join their order's trace.
    starts_trace: bool = False
    # Answered by the ACME middleware without the router (see the module's docstring).
    direct: bool = True
    # A POST that is not a JWS is refused with 405 (the resource is read with GET): the directory.
    get_resource: bool = False


@dataclass(frozen=True, slots=True)
class PageRoute:
    """A plain endpoint: no JWS."""

    path: str
    endpoint: Endpoint
    methods: tuple[str, ...] = ("GET", "HEAD")
    # Errors are rendered by the endpoint itself (health: no ACME problem documents).
    guarded: bool = True


Route = AcmeRoute | PageRoute


async def run_acme(request: Request, route: AcmeRoute) -> Response:
    """Verify the JWS, run the handler (in one transaction unless its ``atomicity`` says
    otherwise), then publish its jobs.

    A handler that needs no transaction runs on ``Database.autocommit`` (PostgreSQL: no
    BEGIN/COMMIT, each statement its own transaction): the account read, the signature check, the
    nonce redemption, the resource read; the few writes these handlers make (expiring an order or
    authorization, claiming a challenge) are single statements. Two round trips fewer. With no
    transaction to roll back, a request refused after its signature was checked keeps its nonce
    spent, as any refused request does at Boulder and Pebble."""
    if route.get_resource and not is_jose(request):
        raise Problem("malformed", "this resource is read with GET, or with a POST-as-GET JWS", 405,
                      headers={"Allow": "GET, HEAD"})
    state, urls = resolve_provisioner(request)
    parsed = await read_jws(request, state, route.auth)
    no_transaction = route.atomicity is Atomicity.NONE or (
        route.atomicity is Atomicity.NONE_FOR_POST_AS_GET and parsed.payload == b"")
    read_key = request.path_params.get(route.read.param) if route.read is not None else None
    call: AcmeCall | None = None
    try:
        async with contextlib.AsyncExitStack() as held:  # a handler may give the connection back meanwhile
            conn = await held.enter_async_context(state.db.autocommit() if no_transaction else state.db.engine.begin())
            verified = await verify(conn, state, urls, parsed, not no_transaction, route.read, read_key)
            call = AcmeCall(request, state, urls, conn, parsed, verified.key, verified.account,
                            held=held if no_transaction else None)
            if verified.prefetched is not None and route.read is not None:
                call.prefetched = (route.read, verified.prefetched)
            try:
                response = await _run_handler(call, route)
                if call.orm is not None:
                    await call.orm.flush()
            finally:
                if call.orm is not None:
                    await call.orm.close()
        for subject, job, msg_id, traceparent in call.jobs:
            await state.outbox.publish(subject, job, msg_id, traceparent)
        if call.deferred is not None:
            return await call.deferred()
        return response
    finally:
        if call is not None:
            for done in call.on_done:
                done()


async def _run_handler(call: AcmeCall, route: AcmeRoute) -> Response:
    if route.needs_current_terms:
        await accounts.check_current_terms(call)
    if not telemetry.tracing_enabled():
        return await route.handler(call)
    params = call.request.path_params
    traceparent = await repo_orders.trace_context(call.conn, params)
    account_id = call.account.id if call.account else None
    with telemetry.span(f"acme.{route.handler.__name__}", traceparent, route.starts_trace,
                        **{"acme.account_id": account_id, "acme.order_id": params.get("order_id")}):
        return await route.handler(call)


@dataclass(frozen=True, slots=True)
class DirectRoute:
    """A ``direct`` row, compiled as Starlette's router would (its regex and convertors)."""

    path: str
    regex: Any
    convertors: dict[str, Any]
    endpoint: Endpoint
    route: Any  # the router's own route for the path, set in the scope as the router would


def acme_endpoint(route: AcmeRoute) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await run_acme(request, route)

    endpoint.__name__ = route.handler.__name__
    return guarded(endpoint)


def mount(app: FastAPI, routes: Sequence[Route]) -> list[DirectRoute]:
    """Add every row to the app's router; the ``direct`` rows, compiled for ``match_direct``."""
    direct = []
    for row in routes:
        if isinstance(row, PageRoute):
            endpoint = guarded(row.endpoint) if row.guarded else row.endpoint
            app.add_api_route(row.path, endpoint, methods=list(row.methods))
            continue
        endpoint = acme_endpoint(row)
        app.add_api_route(row.path, endpoint, methods=["POST"])
        if row.direct:
            regex, _format, convertors = compile_path(row.path)
            direct.append(DirectRoute(row.path, regex, convertors, endpoint, app.router.routes[-1]))
    return direct


def match_direct(scope: Scope, direct: Sequence[DirectRoute]) -> Endpoint | None:
    """The endpoint of the direct route ``scope`` matches (its path parameters, route and endpoint
    set in ``scope`` as the router would), else None."""
    path = scope["path"]
    for route in direct:
        match = route.regex.match(path)
        if match is not None:
            convertors = route.convertors
            scope["path_params"] = {name: convertors[name].convert(value) for name, value in match.groupdict().items()}
            scope["route"] = route.route
            scope["endpoint"] = route.endpoint
            return route.endpoint
    return None
