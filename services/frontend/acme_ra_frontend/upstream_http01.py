"""The upstream http-01 responder: ``GET /.well-known/acme-challenge/<token>`` on plain HTTP.

With ``ACME_RA_UPSTREAM_AUTHZ_STRATEGY=http-01`` the signer stores the key authorization of
each upstream challenge in the database (``upstream_key_authorizations``, written by
``acme_ra_signer.upstream.http01``) before POSTing the challenge. Every frontend process with
``ACME_RA_UPSTREAM_HTTP01_LISTEN`` serves those rows on that listener, so any replica answers
any token; hosts redirect their own ``/.well-known/acme-challenge/`` here (RFC 8555 §8.3: the
CA follows the redirect; docs/upstream.md has the nginx, Apache, HAProxy and Caddy lines).

Nothing else is served on this listener: a known, unexpired token answers 200 with the key
authorization as ``text/plain``; any other token, and any other path, 404; a method other
than GET or HEAD on a challenge path, 405. A token is checked against the stored tokens'
syntax (base64url, bounded length) before the database is asked. It is not behind
``ACME_RA_POLICY_CLIENT_NETWORKS``: the upstream CA's validators come from anywhere.

The listener is bound by ``bind`` before the frontend forks its workers (each serves on the
same socket) and served by a second uvicorn server in each frontend process's event loop for
as long as the ACME app runs (``attach``), with the ACME listener's HTTP limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import Counter
from starlette.types import Receive, Scope, Send

from acme_ra.config import Settings, parse_host_port
from acme_ra.db.engine import Database
from acme_ra.db.models import UPSTREAM_TOKEN_PATTERN
from acme_ra_frontend import workers
from acme_ra_frontend.http_limits import HttpLimits, limited_protocol
from acme_ra_frontend.repo import key_authorizations as repo

log = logging.getLogger("acme_ra.frontend.upstream_http01")

SETTING = "ACME_RA_UPSTREAM_HTTP01_LISTEN"
PATH_PREFIX = "/.well-known/acme-challenge/"
# How long stopping waits for the requests in flight on this listener (seconds).
GRACEFUL_SHUTDOWN_SECONDS = 2

RESPONSES = Counter(
    "acme_ra_upstream_http01_responses_total",
    "Requests on ACME_RA_UPSTREAM_HTTP01_LISTEN by outcome: served (a key authorization), unknown "
    "(no such token, or expired), malformed (not a token), not_found (another path), "
    "method_not_allowed, unavailable (the database could not be asked).",
    ["outcome"],
)

_TOKEN = re.compile(UPSTREAM_TOKEN_PATTERN)


class Responder:
    """The ASGI app of the listener (HTTP only; run with ``lifespan="off"``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if not path.startswith(PATH_PREFIX):
            await self._answer(send, method, 404, b"not found\n", "not_found")
            return
        if method not in ("GET", "HEAD"):
            await self._answer(send, method, 405, b"method not allowed\n", "method_not_allowed",
                               [(b"allow", b"GET, HEAD")])
            return
        token = path[len(PATH_PREFIX):]
        if not _TOKEN.fullmatch(token):
            await self._answer(send, method, 404, b"not found\n", "malformed")
            return
        try:
            key_authorization = await repo.key_authorization(self.db, token)
        except Exception as error:  # noqa: BLE001 - a database outage: the CA may try again
            log.warning("upstream http-01 token not looked up: %s", type(error).__name__)
            await self._answer(send, method, 503, b"temporarily unavailable\n", "unavailable",
                               [(b"retry-after", b"5")])
            return
        if key_authorization is None:
            log.info("upstream http-01 token unknown", extra={"token": token[:12], "client": _client(scope)})
            await self._answer(send, method, 404, b"not found\n", "unknown")
            return
        log.info("upstream http-01 key authorization served", extra={"token": token[:12], "client": _client(scope)})
        await self._answer(send, method, 200, key_authorization.encode(), "served")

    @staticmethod
    async def _answer(send: Send, method: str, status: int, body: bytes, outcome: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        RESPONSES.labels(outcome).inc()
        headers = [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def bind(listen: str) -> socket.socket:
    """The listening socket (before any fork); a port that cannot be bound is one line naming
    the setting, and exit status 1."""
    host, port = parse_host_port(listen)  # Settings checked the syntax
    return workers.bind(host.strip("[]"), port, backlog=128, what=f"{SETTING}={listen!r}")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to the ACME listener's server (whose lifespan
    starts and stops this one)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(sock: socket.socket, db: Database, settings: Settings) -> None:
    """Serve the responder on ``sock`` until cancelled; then stop accepting and finish the
    requests in flight."""
    config = uvicorn.Config(
        Responder(db),
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        http=limited_protocol(HttpLimits.from_settings(settings)),
        timeout_keep_alive=settings.http_idle_timeout_seconds,  # type: ignore[arg-type]
    )
    server = _Server(config)
    running = asyncio.ensure_future(server.serve(sockets=[sock]))
    log.info("upstream http-01 responder listening", extra={"listen": settings.upstream_http01_listen})
    try:
        await asyncio.shield(running)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await running


def _report_stop(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("upstream http-01 responder stopped: %r", task.exception())


def attach(app: FastAPI, sock: socket.socket, settings: Settings) -> None:
    """Run the responder inside the ACME app's lifespan, on its database: it starts once the
    app is up and stops before the app lets its database go."""
    inner: Callable[[Any], contextlib.AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            task = asyncio.create_task(serve(sock, app_.state.ra.db, settings), name="upstream-http01")
            task.add_done_callback(_report_stop)
            try:
                yield state
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
