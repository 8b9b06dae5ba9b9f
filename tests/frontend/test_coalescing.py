"""The frontend's write-coalescing transport (acme_ra_frontend.coalescing) under real uvicorn and on its own."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from acme_ra_frontend.coalescing import CoalescingHttpToolsProtocol, CoalescingTransport


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1234)}.get(name, default)


async def test_writes_of_one_loop_step_go_out_as_one() -> None:
    real = Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"")
    transport.write(b"body")
    assert real.writes == [] and transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)  # the rest is the real transport's


async def test_close_writes_what_is_pending_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    real = Recording()
    transport = CoalescingTransport(real, loop)
    transport.write(b"last words")
    transport.close()
    assert real.writes == [b"last words"] and real.closed
    await asyncio.sleep(0)
    assert real.writes == [b"last words"]  # the scheduled flush finds nothing more

    aborted = Recording()
    transport = CoalescingTransport(aborted, loop)
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert aborted.writes == [] and aborted.aborted


class CountingProxy:
    """Counts the writes reaching the real transport."""

    def __init__(self, transport: asyncio.Transport, counts: list[int]) -> None:
        self._transport = transport
        self._counts = counts

    def write(self, data: bytes) -> None:
        self._counts.append(len(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


async def serve_three_answers(protocol: type[HttpToolsProtocol]) -> list[int]:
    """A real uvicorn server on ``protocol`` answering three keep-alive requests; the sizes of the
    writes that reached the socket's transport."""
    counts: list[int] = []

    class Counted(protocol):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CountingProxy(transport, counts))

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})  # type: ignore[operator]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, http=Counted, lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            answer = b""
            while not answer.endswith(b'{"ok":true}'):
                answer += await asyncio.wait_for(reader.read(65536), 5)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        writer.close()
        await writer.wait_closed()
    finally:
        server.should_exit = True
        await serving
    return counts


async def test_uvicorn_writes_each_answer_once_through_it() -> None:
    assert len(await serve_three_answers(HttpToolsProtocol)) == 6  # uvicorn alone: headers, then body
    coalesced = await serve_three_answers(CoalescingHttpToolsProtocol)
    assert len(coalesced) == 3 and all(size > 11 for size in coalesced)
