"""A minimal HTTP/1.1 keep-alive client for the load generator: one connection per worker,
requests in sequence on it, responses parsed by httptools (llhttp, C).

Why not httpx: on the 2-core reference machine httpx spent more CPU per request than the
frontend it measured (about 3 ms against 1.6 ms for a HEAD newNonce), so the generator would
have competed with the servers for the same two cores. This costs a tenth of that.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

USER_AGENT = "acme-ra-bench"
# A connection idle this long is not reused (uvicorn closes idle keep-alive connections after
# 5 s; reusing one the server is closing would fail the request), as httpx's keepalive_expiry.
KEEPALIVE_EXPIRY_SECONDS = 4.0


class HttpError(Exception):
    """The connection failed, the server broke the protocol, or (``timed_out``) it did not answer."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_used = time.monotonic()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._head = False
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(f"connection lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
            pass
        except httptools.HttpParserError as error:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(HttpError(f"bad response: {error}"))
            assert self.transport is not None
            self.transport.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        if self._head:  # no body follows, whatever Content-Length says: done, new parser
            self._finish()
            self._parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._head:
            self._finish()

    def _finish(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(HttpResponse(self._parser.get_status_code(), self._headers, b"".join(self._body)))

    async def send(self, request: bytes, head: bool) -> HttpResponse:
        assert self.transport is not None
        self._head = head
        self._headers, self._body = {}, []
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None
            self.last_used = time.monotonic()


class HttpClient:
    """Keep-alive connections by (host, port); use one client per worker (requests in sequence)."""

    def __init__(self, ssl_context: ssl.SSLContext | None, timeout: float) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._connections: dict[tuple[str, int, bool], _Connection] = {}

    async def _connection(self, host: str, port: int, tls: bool) -> _Connection:
        key = (host, port, tls)
        connection = self._connections.get(key)
        if connection is not None and not connection.closed \
                and time.monotonic() - connection.last_used > KEEPALIVE_EXPIRY_SECONDS:
            self._drop(connection)
        if connection is None or connection.closed:
            context = (self.ssl_context or ssl.create_default_context()) if tls else None
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(_Connection, host, port, ssl=context,
                                                         server_hostname=host if tls else None)
            self._connections[key] = connection
        return connection

    async def request(self, method: str, url: str, body: bytes = b"", content_type: str | None = None) -> HttpResponse:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if tls else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", f"User-Agent: {USER_AGENT}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        connection = await self._connection(host, port, tls)
        try:
            async with asyncio.timeout(self.timeout):
                return await connection.send(request, head=method == "HEAD")
        except TimeoutError:
            self._drop(connection)
            raise HttpError(f"{method} {url}: no answer within {self.timeout:.0f}s", timed_out=True) from None
        except HttpError:
            self._drop(connection)
            raise

    def _drop(self, connection: _Connection) -> None:
        if connection.transport is not None:
            connection.transport.close()
        connection.closed = True

    async def close(self) -> None:
        for connection in self._connections.values():
            if connection.transport is not None and not connection.closed:
                connection.transport.close()
        self._connections.clear()
