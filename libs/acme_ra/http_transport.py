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

import httpx

from acme_ra.http_wire import (
    Answer,
    ExchangeFailed,
    Http11Connection,
    ResponseLimitExceeded,
    request_bytes,
)

# How long aclose() waits for its connections to finish closing (a TLS close_notify, then the socket).
CLOSE_WAIT_SECONDS = 1.0
# What callers import from here (the wire's types are part of the transport's API).
__all__ = ["Answer", "LeanTransport", "ResponseLimitExceeded"]

# Connections open at once to one (scheme, host, port); more requests wait for one to be free
# (httpx's pool timeout).
MAX_CONNECTIONS_PER_ORIGIN = 20

_DEFAULT_PORTS = {b"http": 80, b"https": 443}

# (scheme, host, port, TLS server name when not the host): what a connection may be reused for.
Origin = tuple[bytes, str, int, str | None]


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
        except ExchangeFailed as failure:
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
