"""The load generator's one http-01 server: ``GET /.well-known/acme-challenge/<token>`` answers
the key authorization registered for the token, anything else 404. Raw asyncio, one response
per connection (validators open a fresh connection per check), so it costs next to nothing.
"""

from __future__ import annotations

import asyncio

CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
# A request head larger than this is refused (no validator sends one).
MAX_HEAD_BYTES = 8192


class ChallengeServer:
    """``tokens`` maps a token to its key authorization; ``served`` and ``missed`` count answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.tokens: dict[str, str] = {}
        self.served = 0
        self.missed = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Http01(self), self.host, self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def answer(self, path: bytes) -> bytes | None:
        if not path.startswith(CHALLENGE_PREFIX):
            return None
        key_authorization = self.tokens.get(path[len(CHALLENGE_PREFIX):].decode("ascii", "replace"))
        return key_authorization.encode() if key_authorization is not None else None


class _Http01(asyncio.Protocol):
    def __init__(self, server: ChallengeServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self.transport.close()
            return
        request_line = self.buffer.split(b"\r\n", 1)[0].split(b" ")
        body = None
        if len(request_line) == 3 and request_line[0] == b"GET":
            body = self.server.answer(request_line[1])
        if body is None:
            self.server.missed += 1
            status, body = b"404 Not Found", b"not found"
        else:
            self.server.served += 1
            status = b"200 OK"
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        self.transport.close()
