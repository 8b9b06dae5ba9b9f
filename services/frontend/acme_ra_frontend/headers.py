"""The ACME headers of every response, and the requests answered before routing.

``AcmeHeaders`` (pure ASGI middleware) adds ``Replay-Nonce``, ``Link rel="index"``, CORS and
``Cache-Control`` to every response under ``/acme/``, errors included, counts and logs it; it
answers HEAD/GET newNonce itself, and calls the endpoint of a ``direct`` ACME POST row
(routing.match_direct) without the router.
"""

from __future__ import annotations

import logging
import time

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from acme_ra_frontend import metrics
from acme_ra_frontend.routing import match_direct
from acme_ra_frontend.state import FrontendState

log = logging.getLogger("acme_ra.frontend")

_EXPOSED = "Link, Replay-Nonce, Location, Retry-After"
# Headers of every newNonce answer but the nonce and the index link (RFC 8555 §7.2).
_NONCE_HEAD_HEADERS = ((b"cache-control", b"no-store"), (b"content-length", b"0"))
_NONCE_GET_HEADERS = ((b"cache-control", b"no-store"),)
_CORS_HEADERS = ((b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", _EXPOSED.encode()))
_EMPTY_BODY: Message = {"type": "http.response.body", "body": b"", "more_body": False}


def new_nonce_links(state: FrontendState) -> dict[str, tuple[bytes, bytes]]:
    """newNonce's path per provisioner → its ``Link rel="index"`` header (name, value), encoded once."""
    return {
        f"/acme/{name}/new-nonce": (b"link", f'<{urls.directory}>;rel="index"'.encode())
        for name, urls in state.urls.items()
    }


class AcmeHeaders:
    """Adds the headers every ACME response carries, and answers HEAD/GET newNonce itself.

    newNonce is the one request a client may send at any rate, without a signature: it is answered
    here, before routing, with headers encoded once, a counter and no log line; the answer is the
    one the route in directory.py would give (HEAD 200, GET 204, ``Cache-Control: no-store``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/acme/"):
            await self.app(scope, receive, send)
            return
        app_state = scope["app"].state
        state: FrontendState | None = getattr(app_state, "ra", None)
        method = scope["method"]
        if state is not None and (method == "HEAD" or method == "GET"):
            link = state.new_nonce_links.get(scope["path"])
            if link is not None:
                await answer_new_nonce(state, method, link, send)
                return
        path: str = scope["path"]
        parts = path.split("/", 3)
        index = None
        if (len(parts) >= 3 and parts[1] == "acme" and state and state.urls_for(parts[2])
                and not path.endswith("/directory")):
            index = state.urls[parts[2]].directory
        started = time.perf_counter()
        direct = match_direct(scope, getattr(app_state, "direct_routes", ())) if method == "POST" else None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if state is not None and b"replay-nonce" not in names:
                    headers.append((b"replay-nonce", state.nonces.issue().encode()))
                if index:
                    headers.append((b"link", f'<{index}>;rel="index"'.encode()))
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                headers.extend(_CORS_HEADERS)
                message["headers"] = headers
                elapsed = time.perf_counter() - started
                template = getattr(scope.get("route"), "path", "unmatched")
                metrics.HTTP_REQUESTS.labels(template, scope["method"], message["status"]).inc()
                metrics.HTTP_SECONDS.labels(template, scope["method"]).observe(elapsed)
                log.info(
                    "request",
                    extra={"method": scope["method"], "path": path, "status": message["status"],
                           "ms": round(elapsed * 1000, 1)},
                )
            await send(message)

        if direct is not None:
            response = await direct(Request(scope, receive))
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


async def answer_new_nonce(state: FrontendState, method: str, link: tuple[bytes, bytes], send: Send) -> None:
    head = method == "HEAD"
    headers = [*(_NONCE_HEAD_HEADERS if head else _NONCE_GET_HEADERS),
               (b"replay-nonce", state.nonces.issue().encode()), link, *_CORS_HEADERS]
    (metrics.NEW_NONCE_HEAD if head else metrics.NEW_NONCE_GET).inc()
    await send({"type": "http.response.start", "status": 200 if head else 204, "headers": headers})
    await send(_EMPTY_BODY)
