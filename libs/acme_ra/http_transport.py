"""A lean HTTP/1.1 transport for httpx: asyncio protocols and httptools (llhttp, C) instead of
httpcore and anyio.

Why: the signer makes about seven requests to its upstream CA per certificate, over one
keep-alive HTTPS connection. Profiled under load, httpx's default transport (httpcore over anyio
streams, cancel scopes, socket polling before each reuse) took about 45 % of the signer's CPU —
1.2 to 3 ms per request, against about 0.4 ms for the same exchange over an ``asyncio.Protocol``
with httptools doing the framing. ``LeanTransport`` keeps httpx's client API (timeouts,
headers, decoding, ``httpx.HTTPError``), so callers do not change; only the wire is cheaper.

What it does: HTTP/1.1 only, with keep-alive connections pooled per origin (one request at a
time on a connection, at most ``MAX_CONNECTIONS_PER_ORIGIN`` at once), TLS with the given
``ssl.SSLContext``, httpx's connect, read and pool timeouts, Content-Length, chunked and
read-until-close responses, HEAD. What it does not: proxies (use httpx's own transport for
those), HTTP/2, upgrades, streaming responses (bodies are read whole: fine for ACME's small
documents and certificate chains).

Errors are httpx's: ``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``PoolTimeout`` and
``RemoteProtocolError``. A request is never sent twice: a connection that breaks under a
request fails that request (an ACME POST may have been taken).

Options for clients that talk to servers they do not trust (the validator's http-01 fetch):
``keepalive=False`` closes every connection after its response (a fresh connection per request);
``max_body_bytes`` keeps at most that much of a body, then closes the connection and marks the
response ``extensions["body_truncated"]`` (an endless body neither fills memory nor keeps the
request reading forever: the read timeout only bounds the wait between bytes); ``max_head_bytes``
makes a status line and headers longer than that, and ``max_header_count`` more header fields than that,
a ``ResponseLimitExceeded`` (a ``RemoteProtocolError`` whose ``reason`` names the limit). The
``sni_hostname`` request extension (as httpcore's) names the TLS server when the URL's host is an address.

``send`` is the same exchange without httpx's objects: a method, a URL string, header pairs and a
body in, an ``Answer`` out. For a client that makes many small requests of one server (the
signer's ACME client): building an ``httpx.Request`` from a URL string and reading an
``httpx.Response`` cost about 90 µs per request, more than the exchange's own Python work.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx

# A connection idle this long is not reused (seconds): servers close idle keep-alive
# connections after a few seconds (uvicorn: 5 s); reusing one they are closing fails the request.
KEEPALIVE_EXPIRY_SECONDS = 4.0
# How long aclose() waits for its connections to finish closing (a TLS close_notify, then the socket).
CLOSE_WAIT_SECONDS = 1.0
# Connections open at once to one (scheme, host, port); more requests wait for one to be free
# (httpx's pool timeout).
MAX_CONNECTIONS_PER_ORIGIN = 20

_DEFAULT_PORTS = {b"http": 80, b"https": 443}

# (scheme, host, port, TLS server name when not the host): what a connection may be reused for.
Origin = tuple[bytes, str, int, str | None]


class ResponseLimitExceeded(httpx.RemoteProtocolError):
    """The response's head passed ``max_head_bytes`` or ``max_header_count``; ``reason`` says which
    (without the request's method and URL, which the message carries)."""

    reason = ""


class _ExchangeFailed(Exception):
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
        """Write ``request`` and wait for its whole response; raises ``_ExchangeFailed``."""
        assert self.transport is not None and self._waiter is None
        if self.lost:
            raise _ExchangeFailed(httpx.RemoteProtocolError, "the connection was closed before the request")
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
            self._waiter.set_exception(_ExchangeFailed(kind, message))


class OriginPool:
    """The connections to one origin: idle ones to reuse (most recent first), and a bound on how
    many requests, hence connections, are under way at once. A pool with no idle connection and
    no request (``users``) holds nothing and is dropped: a client dialling many addresses once
    each (the validator) does not keep a pool per address forever."""

    def __init__(self, limit: int) -> None:
        self.idle: list[Http11Connection] = []
        self.slots = asyncio.Semaphore(limit)
        self.users = 0  # requests waiting for or holding a slot

    def unused(self) -> bool:
        return self.users == 0 and not self.idle

    def take_idle(self) -> Http11Connection | None:
        """The most recently used idle connection still fit for a request; stale ones are closed."""
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


class LeanTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=LeanTransport(ssl_context=...))``: HTTP/1.1 keep-alive over
    asyncio protocols (see the module docstring for what it leaves out, and for ``keepalive``,
    ``max_body_bytes``, ``max_head_bytes`` and ``max_header_count``)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        *,
        max_connections_per_origin: int = MAX_CONNECTIONS_PER_ORIGIN,
        keepalive: bool = True,
        max_body_bytes: int | None = None,
        max_head_bytes: int | None = None,
        max_header_count: int | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.max_connections_per_origin = max_connections_per_origin
        self.keepalive = keepalive
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.max_header_count = max_header_count
        self.connections_opened = 0  # for tests and benchmarks: how well keep-alive works
        self._pools: dict[Origin, OriginPool] = {}
        self._busy: set[Http11Connection] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: Mapping[str, Any] = request.extensions.get("timeout") or {}
        origin = _origin(request)
        wire, reusable = request_bytes(request, await request.aread())
        answer = await self._round_trip(origin, wire, reusable, request.method, timeouts, request)
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1" if answer.http_version == "1.1" else b"HTTP/1.0"}
        if answer.truncated:
            extensions["body_truncated"] = True
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            # A stream, not content=: httpx would add a Content-Length the server never sent.
            stream=httpx.ByteStream(answer.body),
            request=request,
            extensions=extensions,
        )

    async def send(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        timeouts: Mapping[str, Any] | None = None,
    ) -> Answer:
        """One request without httpx's objects: ``Host`` and, with a body or for a POST,
        ``Content-Length`` are added to ``headers`` as httpx would; ``timeouts`` as httpx's
        ``timeout`` extension (``connect``, ``read``, ``pool``). Errors are httpx's, as for
        ``handle_async_request``, but carry no request."""
        parts = urlsplit(url)
        scheme = parts.scheme.encode("ascii")
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise httpx.UnsupportedProtocol(f"LeanTransport speaks http and https, not {url!r}")
        default_port = _DEFAULT_PORTS[scheme]
        port = parts.port or default_port
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]  # httpx's Host: no userinfo, no default port
        if parts.port == default_port:
            host = host.rsplit(":", 1)[0]
        try:
            lines = [method.encode("ascii"), b" ", target.encode("ascii"), b" HTTP/1.1\r\nHost: ", host.encode("ascii"), b"\r\n"]
        except UnicodeEncodeError:
            raise httpx.UnsupportedProtocol(f"not an ASCII URL (percent-encoded, IDNA host): {url!r}") from None
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        if body or method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines += (b"\r\n", body)
        origin: Origin = (scheme, parts.hostname, port, None)
        return await self._round_trip(origin, b"".join(lines), True, method, timeouts or {}, None)

    async def _round_trip(
        self,
        origin: Origin,
        wire: bytes,
        reusable: bool,
        method: str,
        timeouts: Mapping[str, Any],
        request: httpx.Request | None,
    ) -> Answer:
        """``wire`` sent on a pooled (or new) connection to ``origin``, its answer read whole."""
        if self._closed:
            raise RuntimeError("LeanTransport used after aclose()")
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = OriginPool(self.max_connections_per_origin)
        pool.users += 1
        try:
            await _acquire_slot(pool, timeouts.get("pool"), origin, request)
            try:
                connection = pool.take_idle() or await self._connect(origin, timeouts.get("connect"), request)
                answer = await self._exchange(connection, wire, method, origin, timeouts.get("read"), request)
            finally:
                pool.slots.release()
            if self.keepalive and answer.keep_alive and reusable and not self._closed:
                pool.idle.append(connection)
            else:
                connection.close()
        finally:
            pool.users -= 1
            if pool.unused() and self._pools.get(origin) is pool:
                del self._pools[origin]
        return answer

    async def aclose(self) -> None:
        """Close every connection and wait (briefly) until they are closed: a TLS connection ends
        with a close_notify, and a loop closed before it leaves an unclosed transport behind."""
        self._closed = True
        connections = [*(c for pool in self._pools.values() for c in pool.idle), *self._busy]
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for connection in self._busy:
            connection.close()
        self._busy.clear()
        waiting = [c.gone for c in connections if c.transport is not None and not c.gone.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=CLOSE_WAIT_SECONDS)

    async def _connect(self, origin: Origin, timeout: float | None, request: httpx.Request | None) -> Http11Connection:
        scheme, host, port, server_name = origin
        tls = self._tls_context() if scheme == b"https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: Http11Connection(loop, self.max_body_bytes, self.max_head_bytes, self.max_header_count),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=(server_name or host) if tls else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout:g}s", request=request) from None
        except ssl.SSLError as error:
            raise httpx.ConnectError(f"TLS with {host}:{port} failed: {error}", request=request) from None
        except OSError as error:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {error}", request=request) from None
        self.connections_opened += 1
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self.ssl_context is None:  # made once: loading the system's roots is slow
            self.ssl_context = ssl.create_default_context()
        return self.ssl_context

    async def _exchange(
        self,
        connection: Http11Connection,
        wire: bytes,
        method: str,
        origin: Origin,
        read_timeout: float | None,
        request: httpx.Request | None,
    ) -> Answer:
        """The response on ``connection``; a connection whose exchange did not end well is closed
        (cancelled mid-response, it is in an unknown state)."""
        self._busy.add(connection)
        done = False
        try:
            answer = await connection.exchange(wire, method == "HEAD", read_timeout)
            done = True
            return answer
        except _ExchangeFailed as failure:
            where = request.url if request is not None else f"{origin[0].decode()}://{origin[1]}:{origin[2]}"
            error = failure.kind(f"{method} {where}: {failure}", request=request)
            if isinstance(error, ResponseLimitExceeded):
                error.reason = str(failure)
            raise error from None
        finally:
            self._busy.discard(connection)
            if not done:
                connection.close()


def _origin(request: httpx.Request) -> Origin:
    url = request.url
    scheme = url.raw_scheme
    if scheme not in _DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(f"LeanTransport speaks http and https, not {url.scheme!r}")
    server_name = request.extensions.get("sni_hostname") if scheme == b"https" else None
    return scheme, url.host, url.port or _DEFAULT_PORTS[scheme], server_name


async def _acquire_slot(pool: OriginPool, timeout: float | None, origin: Origin, request: httpx.Request | None) -> None:
    if not pool.slots.locked():
        await pool.slots.acquire()  # free at once: no timer
        return
    try:
        async with asyncio.timeout(timeout):
            await pool.slots.acquire()
    except TimeoutError:
        raise httpx.PoolTimeout(
            f"no free connection to {origin[1]} within {timeout:g}s", request=request
        ) from None


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
