"""An http-01 server of an attacker's: per token, a decompression bomb, a redirect loop, a redirect
to a forbidden port or scheme, a server that dribbles one byte at a time, a 1 MiB header, one
that never answers (``hang``), or
(``good``) the key authorization. Asyncio, on 127.0.0.1; used by tests/validator (in process)
and tests/hostile (in front of the real validator, on the lab's ACME_RA_VALIDATION_HTTP_PORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

CHALLENGE_PATH = "/.well-known/acme-challenge/"
# Decoded size of gzip_bomb(): 1 GiB of zeros.
BOMB_DECODED_BYTES = 1 << 30
# Seconds between two bytes of a dribbling answer.
DRIBBLE_INTERVAL_SECONDS = 1.0
# Size of the header of a "big-header" answer.
BIG_HEADER_BYTES = 1 << 20


@functools.cache
def gzip_bomb() -> bytes:
    """gzip of gzip of ``BOMB_DECODED_BYTES`` zeros: under 2 KiB that ``Content-Encoding: gzip,
    gzip`` turns into 1 GiB. The inner stream is built, not compressed (compressing 1 GiB takes
    seconds): after a full flush every MiB of zeros deflates to the same bytes."""
    chunk = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(BOMB_DECODED_BYTES >> 20):
        crc = zlib.crc32(chunk, crc)
    inner = b"".join([
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff",  # gzip header: deflate, no name, no time
        first,
        block * ((BOMB_DECODED_BYTES >> 20) - 1),
        deflate.flush(zlib.Z_FINISH),
        struct.pack("<II", crc, BOMB_DECODED_BYTES & 0xFFFFFFFF),
    ])
    outer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return outer.compress(inner) + outer.flush()


def gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return packer.compress(data) + packer.flush()


@dataclass
class HostileChallengeServer:
    """``modes[token]`` says how the answer for that token misbehaves (see ``_answer``);
    ``key_authorizations[token]`` is what ``good`` (and the bombs' inner text) serve. ``requests``
    counts the requests per path."""

    host: str = "127.0.0.1"
    port: int = 0
    tls_port: int = 443  # where an "https-redirect" points
    modes: dict[str, str] = field(default_factory=dict)
    key_authorizations: dict[str, str] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HostileChallengeServer]:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            path = head.split(" ", 2)[1]
            self.requests[path] = self.requests.get(path, 0) + 1
            token = path.removeprefix(CHALLENGE_PATH).split("/", 1)[0]
            host = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
                         if line.lower().startswith("host:")), self.host)
            await self._answer(writer, self.modes.get(token, "missing"), token, path, host)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _answer(self, writer: asyncio.StreamWriter, mode: str, token: str, path: str, host: str) -> None:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        key_authorization = self.key_authorizations.get(token, "").encode()
        if mode == "good":
            await _send(writer, 200, {}, key_authorization)
        elif mode == "bomb":  # gzip of gzip of 1 GiB
            await _send(writer, 200, {"Content-Encoding": "gzip, gzip"}, gzip_bomb())
        elif mode == "gzip":  # a server that compresses whatever it was asked
            await _send(writer, 200, {"Content-Encoding": "gzip"}, gzip(key_authorization))
        elif mode == "loop":
            await _send(writer, 302, {"Location": path}, b"")
        elif mode == "forbidden-port":
            await _send(writer, 302, {"Location": f"http://{name}:22{path}"}, b"")
        elif mode == "forbidden-scheme":
            await _send(writer, 302, {"Location": f"file:///etc/passwd?{token}"}, b"")
        elif mode == "big-header":
            await _send(writer, 200, {"X-Filler": "a" * BIG_HEADER_BYTES}, key_authorization)
        elif mode == "hang":  # reads the request, never answers
            await asyncio.Event().wait()
        elif mode == "dribble":  # a Content-Length it never reaches, a byte a second
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while True:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(DRIBBLE_INTERVAL_SECONDS)
        else:
            await _send(writer, 404, {}, b"no such token")


async def _send(writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes) -> None:
    lines = [f"HTTP/1.1 {status} Answer", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
