"""HTTP limits of the ACME listener, enforced by the server itself (not only by a proxy in front).

uvicorn's httptools protocol (llhttp) has no limit of its own on the request line, on the number
or size of headers, nor on the time a client takes to send them: a 20 MiB request line or 20,000
headers were read into memory, and a connection that sent nothing, or one byte now and then,
was kept for ever. ``limited_protocol`` gives uvicorn a protocol class that bounds each of them:

- the request head (request line + headers) is fed to the parser only up to
  ``max_header_bytes``: beyond, 431 (or 414 while still in the request line) and close;
- the request target longer than ``max_request_line_bytes``: 414; more than ``max_header_count``
  headers: 431;
- a head not complete ``header_timeout`` after its first byte, or a body not complete
  ``body_timeout`` after its head (time the server itself stops reading does not count): 408;
- a connection idle ``idle_timeout`` before its first request or between two is closed (uvicorn
  only counts the idle time after a response).

Those answers are ACME problem documents (``malformed``) with ``Connection: close``; they carry
no nonce, as no request was read. ``BodyLimit`` (ASGI middleware, the app's outermost) answers a
body over ``max_body_bytes`` with 413 ``malformed`` and a ``Replay-Nonce``, before reading it when
``Content-Length`` says so, else as soon as the streamed (chunked) body passes the limit.
Every limit has its setting: docs/security.md "HTTP limits", docs/configuration.md.

The protocol class extends uvicorn's HttpToolsProtocol through its parser callbacks and a few of
its attributes (``cycle``, ``flow``, ``timeout_keep_alive_task``): uvicorn is pinned in
pyproject.toml, and tests/frontend/test_http_limits.py runs the class under uvicorn itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from acme_ra.config import Settings
from acme_ra.protocol.problems import Problem

log = logging.getLogger("acme_ra.frontend.http")

PROBLEM_CONTENT_TYPE = b"application/problem+json"
# When the server closes a connection whose request it has not read to the end (a refusal, a 413),
# it keeps reading and dropping what still comes for this long first (nginx's lingering close):
# closing at once with unread input makes the kernel send a reset, and the client may lose the
# answer it was sent.
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class HttpLimits:
    max_request_line_bytes: int
    max_header_count: int
    max_header_bytes: int
    max_body_bytes: int
    header_timeout: float
    body_timeout: float
    idle_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_request_line_bytes=settings.http_max_request_line_bytes,
            max_header_count=settings.http_max_header_count,
            max_header_bytes=settings.http_max_header_bytes,
            max_body_bytes=settings.http_max_body_bytes,
            header_timeout=settings.http_header_timeout_seconds,
            body_timeout=settings.http_body_timeout_seconds,
            idle_timeout=settings.http_idle_timeout_seconds,
        )


def problem_bytes(status: int, detail: str) -> bytes:
    return orjson.dumps({"type": "urn:ietf:params:acme:error:malformed", "detail": detail, "status": status})


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the protocol answers ``status``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) for these limits."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusal: _Refused | None = None
        self._reading_head = True  # waiting for (the rest of) a request head
        self._head_bytes = 0
        self._line_done = False  # the head's request line has ended
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._lingering = False
        self._real_transport: asyncio.Transport | None = None

    # Connection ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._real_transport = transport
        self.transport = _LingeringTransport(transport, self)  # type: ignore[assignment]
        # A new connection that sends nothing is closed as an idle kept-alive one is.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self._lingering = True  # closed already: nothing to linger for
        super().connection_lost(exc)

    def close_or_linger(self) -> None:
        """Close now, or, in the middle of a request, after LINGER_SECONDS of dropping its rest."""
        if self._lingering or self._real_transport is None:
            if self._real_transport is not None:
                self._real_transport.close()
            return
        self._lingering = True
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        if not (self._reading_head and self._head_bytes == 0):
            self.flow.resume_reading()
            self.loop.call_later(LINGER_SECONDS, self._real_transport.close)
        else:
            self._real_transport.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a request already answered: dropped
        while data and not self.transport.is_closing():
            if self._reading_head:
                room = self.limits.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse(431 if self._line_done else 414,
                                 f"request head over {self.limits.max_header_bytes} bytes")
                    return
                chunk, data = data[:room], data[room:]
                self._head_bytes += len(chunk)
                self._line_done = self._line_done or b"\n" in chunk
                if self._deadline is None:
                    self._arm(self.limits.header_timeout, "headers")
            else:
                chunk, data = data, b""
            super().data_received(chunk)

    # Parser callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line_bytes:
            raise self._stop(414, f"request target over {self.limits.max_request_line_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            raise self._stop(431, f"more than {self.limits.max_header_count} request headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel_deadline()
        self._arm(self.limits.body_timeout, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        self._reading_head = True
        self._head_bytes = 0
        self._line_done = False
        super().on_message_complete()

    # Refusals ------------------------------------------------------------------------------------

    def _stop(self, status: int, detail: str) -> _Refused:
        self._refusal = _Refused(status, detail)
        return self._refusal

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, which our callbacks raise to stop parsing."""
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            self._refuse(400, "the request is not valid HTTP/1.1")
        else:
            self._refuse(refusal.status, refusal.detail)

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` with a problem document (unless a response to this request is under
        way or sent) and close; the app, if it is still at this request, sees a disconnect."""
        self._cancel_deadline()
        log.info("request refused", extra={"status": status, "detail": detail,
                                           "client": self.client[0] if self.client else None})
        cycle = self.cycle
        in_progress = cycle is not None and cycle.response_started and not cycle.response_complete
        answered = cycle is not None and cycle.response_complete and not self._reading_head
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive gets http.disconnect, its send is dropped
            cycle.message_event.set()
        if not self.transport.is_closing() and not in_progress and not answered:
            body = problem_bytes(status, detail)
            self.transport.write(b"".join([
                STATUS_LINE[status],
                b"content-type: ", PROBLEM_CONTENT_TYPE, b"\r\n",
                b"content-length: ", str(len(body)).encode(), b"\r\n",
                b"cache-control: no-store\r\nconnection: close\r\n\r\n",
                body,
            ]))
        self.transport.close()  # lingers (_LingeringTransport)

    # Deadlines -----------------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, self._deadline_passed, seconds, what)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self, seconds: float, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.flow is not None and self.flow.read_paused:  # the server stopped reading: not the client's fault
            self._arm(seconds, what)
            return
        self._refuse(408, f"the request {what} were not received within {seconds:g} s"
                     if what == "headers" else f"the request {what} was not received within {seconds:g} s")


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: ``close`` lingers (LINGER_SECONDS) when the
    request has not been read to the end; everything else is the real transport's."""

    def __init__(self, transport: asyncio.Transport, protocol: LimitedHttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_or_linger()

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BodyLimit:
    """413 ``malformed`` with a ``Replay-Nonce`` for a body over ``max_bytes``: at once when the
    declared ``Content-Length`` is over it (nothing read), else when the streamed body passes it
    (the app's read raises the problem; each route renders it as any other). Every 413 closes the
    connection, so the rest of the body is never read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _problem(self) -> Problem:
        return Problem("malformed", f"request body is larger than {self.max_bytes} bytes", 413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._answer(scope, send)
            return
        if scope["method"] in ("GET", "HEAD"):  # no route reads their body (newNonce's fast path)
            await self.app(scope, receive, send)
            return
        received = 0

        body_done = False

        async def counted_receive() -> Message:
            nonlocal received, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._problem()
                body_done = not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not body_done:
                # The client left (or was cut off: a slow body) mid-body: a problem, which the
                # route renders to nobody, rather than an "unexpected" ClientDisconnect logged.
                raise Problem("malformed", "the connection closed before the request body was received")
            return message

        started = False

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 413:
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        try:
            await self.app(scope, counted_receive, closing_send)
        except Problem as problem:  # raised by counted_receive outside any route's own handling
            if started:
                raise
            if problem.status == 413:
                await self._answer(scope, send)

    async def _answer(self, scope: Scope, send: Send) -> None:
        problem = self._problem()
        state = getattr(scope["app"].state, "ra", None) if "app" in scope else None
        headers = [(b"content-type", PROBLEM_CONTENT_TYPE), (b"cache-control", b"no-store"),
                   (b"connection", b"close"), (b"access-control-allow-origin", b"*")]
        if state is not None:
            headers.append((b"replay-nonce", state.nonces.issue().encode()))
            parts = scope["path"].split("/", 3)
            if len(parts) >= 3 and parts[1] == "acme" and state.urls_for(parts[2]):
                headers.append((b"link", f'<{state.urls[parts[2]].directory}>;rel="index"'.encode()))
        body = orjson.dumps(problem.to_dict())
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
