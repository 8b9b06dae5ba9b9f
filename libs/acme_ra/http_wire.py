"""HTTP/1.1 on one connection, for acme_ra.http_transport: the request as written on the wire
(``request_bytes``), and the response parsed as it arrives by httptools (llhttp, C) in an
``asyncio.Protocol`` (``Http11Connection``), with the limits a client of untrusted servers sets
(body, head and header-count caps; a read timeout between bytes). The pool, the timeouts of
connect and pool, TLS and httpx's API are the transport's."""

from __future__ import annotations

import asyncio
import time

import httptools
import httpx

# A connection idle this long is not reused (seconds): servers close idle keep-alive
# connections after a few seconds (uvicorn: 5 s); reusing one they are closing fails the request.
KEEPALIVE_EXPIRY_SECONDS = 4.0


class ResponseLimitExceeded(httpx.RemoteProtocolError):
    """The response's head passed ``max_head_bytes`` or ``max_header_count``; ``reason`` says which
    (without the request's method and URL, which the message carries)."""

    reason = ""


class ExchangeFailed(Exception):
    """How a request on an open connection failed; turned into httpx's error with the request."""

    def __init__(self, kind: type[httpx.TransportError], message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Answer:
    """A parsed response: status, raw header pairs, body, and whether the connection stays open."""

    __slots__ = ("body", "headers", "http_version", "keep_alive", "status", "truncated")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        http_version: str,
        keep_alive: bool,
        truncated: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.truncated = truncated


class Http11Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a request is written whole, the response is parsed as it arrives
    and handed to the waiting request when complete (or, past ``max_body_bytes``, cut short)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_body_bytes: int | None = None,
        max_head_bytes: int | None = None,
        max_header_count: int | None = None,
    ) -> None:
        self.loop = loop
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.max_header_count = max_header_count
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.gone: asyncio.Future[None] = loop.create_future()  # done once the connection is closed
        self.idle_since = time.monotonic()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._head = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._until_close = False  # neither Content-Length nor chunked: the body ends with the connection
        self._body_size = 0
        self._cut = False  # the body passed max_body_bytes: the answer is given, the rest ignored
        self._head_size = 0  # bytes received before the headers were complete (1xx answers included)
        self._header_count = 0  # header fields received (1xx answers included)
        self._read_timeout: float | None = None
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.gone.done():
            self.gone.set_result(None)
        if self._headers_done and self._until_close and exc is None:
            self._answer(keep_alive=False)
        else:
            reason = f": {exc}" if exc else ""
            self._fail(httpx.RemoteProtocolError, f"server disconnected before a complete response{reason}")

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a server talking out of turn; not reusable
            self.close()
            return
        self._last_read = self.loop.time()
        if not self._headers_done:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError, "the server switched protocols, which was not asked for")
            self.close()
        except httptools.HttpParserError as error:
            self._fail(httpx.RemoteProtocolError, f"malformed response: {error}")
            self.close()
        else:
            self._check_head_size()

    # httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self.max_header_count is not None and self._header_count > self.max_header_count:
            if self._header_count == self.max_header_count + 1:
                self._fail(ResponseLimitExceeded, f"more than {self.max_header_count} response header fields")
                self.close()
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._head:
            # No body follows a HEAD answer whatever Content-Length says; llhttp cannot be told,
            # so this parser is done and the next response gets a fresh one.
            self._answer(keep_alive=self._parser.should_keep_alive())
            self._parser = httptools.HttpResponseParser(self)
            return
        names = {name.lower() for name, _ in self._headers}
        status = self._parser.get_status_code()
        self._until_close = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and status >= 200
            and status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        if self.max_body_bytes is None:
            self._body.append(body)
            return
        if self._cut:
            return
        room = self.max_body_bytes - self._body_size
        if len(body) <= room:
            self._body.append(body)
            self._body_size += len(body)
            return
        self._body.append(body[:room])
        self._cut = True
        self._answer(keep_alive=False, truncated=True)
        self.close()

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # 1xx interim answer: the real one follows
            self._headers, self._body, self._headers_done = [], [], False
            return
        self._answer(keep_alive=self._parser.should_keep_alive())

    # requests ---------------------------------------------------------------------------------

    async def exchange(self, request: bytes, head: bool, read_timeout: float | None) -> Answer:
        """Write ``request`` and wait for its whole response; raises ``ExchangeFailed``."""
        assert self.transport is not None and self._waiter is None
        if self.lost:
            raise ExchangeFailed(httpx.RemoteProtocolError, "the connection was closed before the request")
        self._head = head
        self._headers, self._body = [], []
        self._headers_done = self._until_close = self._cut = False
        self._body_size = self._head_size = self._header_count = 0
        self._waiter = self.loop.create_future()
        # A wall-clock sampler (py-spy) charges this frame far more than its CPU: the write wakes
        # the server, which on a busy machine takes the CPU before the write returns, and the
        # preempted caller still counts as running. Against Pebble on 2 cores (uvloop, TLS):
        # 14-29 us of thread CPU per write, 33-93 us of wall time, an involuntary context switch
        # inside 40-70 % of the writes.
        self.transport.write(request)
        if read_timeout is not None:
            self._read_timeout = read_timeout
            self._last_read = self.loop.time()
            self._timer = self.loop.call_later(read_timeout, self._check_read_timeout)
        try:
            return await self._waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.idle_since = time.monotonic()

    def reusable(self, now: float) -> bool:
        """Open, not closing, and not idle so long that the server may be closing it."""
        return (
            not self.lost
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < KEEPALIVE_EXPIRY_SECONDS
        )

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _check_read_timeout(self) -> None:
        """httpx's read timeout: the longest wait for the next bytes, not for the whole answer."""
        assert self._read_timeout is not None
        quiet = self.loop.time() - self._last_read
        if quiet < self._read_timeout:
            self._timer = self.loop.call_later(self._read_timeout - quiet, self._check_read_timeout)
            return
        self._timer = None
        self._fail(httpx.ReadTimeout, f"no data from the server for {self._read_timeout:g}s")
        self.close()

    def _check_head_size(self) -> None:
        """``max_head_bytes``: a status line and headers that never end are a protocol error."""
        if self.max_head_bytes is not None and not self._headers_done and self._head_size > self.max_head_bytes:
            self._fail(ResponseLimitExceeded, f"response headers longer than {self.max_head_bytes} bytes")
            self.close()

    def _answer(self, keep_alive: bool, truncated: bool = False) -> None:
        if self._waiter is not None and not self._waiter.done():
            version = self._parser.get_http_version()
            body = b"".join(self._body)
            self._waiter.set_result(
                Answer(self._parser.get_status_code(), self._headers, body, version, keep_alive, truncated)
            )

    def _fail(self, kind: type[httpx.TransportError], message: str) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ExchangeFailed(kind, message))


def request_bytes(request: httpx.Request, body: bytes) -> tuple[bytes, bool]:
    """The request as written on the wire: request line, httpx's headers (Host included), body —
    chunk-encoded when httpx announced ``Transfer-Encoding: chunked`` (a streamed body); and
    whether the connection may carry another request (not if this one says ``Connection: close``)."""
    chunked = False
    keep_alive = True
    lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += (name, b": ", value, b"\r\n")
        lowered = name.lower()
        if lowered == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        elif lowered == b"connection" and value.lower() == b"close":
            keep_alive = False
    lines.append(b"\r\n")
    if chunked:
        if body:
            lines += (b"%x\r\n" % len(body), body, b"\r\n")
        lines.append(b"0\r\n\r\n")
    else:
        lines.append(body)
    return b"".join(lines), keep_alive
