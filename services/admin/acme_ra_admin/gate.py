"""The admin listener's front door: an ASGI middleware that checks a request's declared size and
its authentication before anything reads its body.

- A body declared (Content-Length) larger than ``MAX_BODY_BYTES`` is answered 413 at once; one
  that is not declared (chunked) is counted as it arrives and cut at the same cap, 413. (FastAPI's
  own ``max_body_size`` would answer only once a route reads the body: after authentication.)
- ``/api/...`` (but its OpenAPI document) wants a live admin bearer token (not revoked, not
  expired): 401 otherwise. The token's id and label are left in ``request.state.admin_token_id``
  and ``admin_token_label`` for the routes (the audit log).
- A console request that carries a body (a form POST), but the login form, wants a live session
  cookie: otherwise a redirect to the login page (303), as every console page without one.
- A read-only token may only read: a change (any API method but GET/HEAD/OPTIONS, any console
  form but logging out) is answered 403.

Early answers say ``Connection: close``: the body a client declared is never read, so the
connection cannot carry another request.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from acme_ra.db.models import AdminToken
from acme_ra_admin import console, tokens
from acme_ra_admin.api import client_address
from acme_ra_admin.operations import AdminOperations

log = logging.getLogger("acme_ra_admin.gate")

# The largest request body the admin listener takes (bytes); not a setting: the API's JSON and the
# console's forms are a few hundred bytes.
MAX_BODY_BYTES = 65_536

API_PREFIX = "/api/"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BEARER_PREFIX = "bearer "
_CLOSE = {"Connection": "close"}


def too_large() -> JSONResponse:
    return JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413,
                        headers=_CLOSE)


def unauthorized() -> JSONResponse:
    return JSONResponse({"detail": "a valid admin bearer token is required"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"} | _CLOSE)


def read_only() -> JSONResponse:
    return JSONResponse({"detail": "this admin token is read-only"}, status_code=403, headers=_CLOSE)


def read_only_page() -> Response:
    html = ("<!doctype html><title>Forbidden</title><p>This admin token is read-only: it cannot change anything. "
            '<a href="/">Back</a></p>')
    return Response(html, status_code=403, media_type="text/html", headers=console.SECURITY_HEADERS | _CLOSE)


def _refuse_change(request: Request, row: AdminToken) -> bool:
    if tokens.may_change(row):
        return False
    log.warning("admin: change refused to a read-only token", extra={
        "path": request.url.path, "method": request.method, "client": client_address(request), "token_id": row.id,
    })
    return True


class AdminGate:
    """``app.add_middleware(AdminGate, openapi_path=...)``: the last middleware added, so the first to run."""

    def __init__(self, app: ASGIApp, openapi_path: str) -> None:
        self.app = app
        self.openapi_path = openapi_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        declared = request.headers.get("content-length")
        if declared is not None and (not (declared.isascii() and declared.strip().isdigit()) or int(declared) > MAX_BODY_BYTES):
            log.warning("admin: request body refused", extra={
                "path": request.url.path, "method": request.method, "client": client_address(request),
                "reason": "too large", "declared": declared[:20],
            })
            await too_large()(scope, receive, send)
            return
        try:
            refusal = await self.authenticate(request)
        except (SQLAlchemyError, OSError) as error:  # the database is down: say so, not how
            log.warning("admin: cannot authenticate: the database does not answer: %s",
                        str(error) or type(error).__name__)
            refusal = JSONResponse({"detail": "the database is unavailable"}, status_code=503, headers=_CLOSE)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, _capped(receive), send)

    async def authenticate(self, request: Request) -> Response | None:
        """None when the request may go on (its token id in ``scope["state"]``), else the answer."""
        path = request.url.path
        ops: AdminOperations = request.app.state.ops
        if path.startswith(API_PREFIX) and path != self.openapi_path:
            header = request.headers.get("authorization", "")
            reason = "missing bearer token"
            if header[:len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
                presented = header[len(BEARER_PREFIX):].strip()
                async with ops.db.transaction() as session:
                    row = await tokens.authenticate(session, presented)
                    expired = row is None and await tokens.expired(session, presented)
                if row is not None:
                    if request.method not in SAFE_METHODS and _refuse_change(request, row):
                        return read_only()
                    state = request.scope.setdefault("state", {})
                    state["admin_token_id"], state["admin_token_label"] = row.id, row.label
                    return None
                reason = "expired token" if expired else "unknown or revoked token"
            log.warning("admin api: unauthorized request", extra={
                "path": path, "method": request.method, "client": client_address(request), "reason": reason,
            })
            return unauthorized()
        carries_body = request.headers.get("content-length", "0").strip() not in ("", "0") or (
            "transfer-encoding" in request.headers)
        if carries_body and path != LOGIN_PATH:
            token_id = console.session_token_id(request.app.state.session_key,
                                                request.cookies.get(console.SESSION_COOKIE))
            if token_id is not None:
                async with ops.db.transaction() as session:
                    row = await tokens.live_token(session, token_id)
                if row is not None:
                    return read_only_page() if path != LOGOUT_PATH and _refuse_change(request, row) else None
            log.warning("admin console: form without a session", extra={
                "path": path, "method": request.method, "client": client_address(request),
            })
            return RedirectResponse(LOGIN_PATH, status_code=303, headers=console.SECURITY_HEADERS | _CLOSE)
        return None



def _capped(receive: Receive) -> Receive:
    """``receive`` that refuses (413) a body growing past ``MAX_BODY_BYTES`` (a chunked one)."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise HTTPException(413, f"request body larger than {MAX_BODY_BYTES} bytes", headers=_CLOSE)
        return message

    return capped
