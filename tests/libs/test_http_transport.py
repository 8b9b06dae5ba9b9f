"""``acme_ra.http_transport.LeanTransport`` against real local HTTP/1.1 servers (plain asyncio
servers written here, TLS from the lab TLS CA), under both event loops it meets: asyncio's (tests,
tools) and uvloop (the services under uvicorn).

Each test is synchronous and runs its scenario on a fresh loop of the kind under test, so that the
server and the client share that loop and nothing outlives it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvloop

from acme_ra import http_wire
from acme_ra.http_transport import LeanTransport
from acme_ra_tools.lab_tls import TlsMaterial, ensure_tls_material

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
CHUNKS = [b"first,", b"second,", b"third"]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    """Runs a scenario to its end on a new loop of the parametrized kind."""
    factory = LOOPS[request.param]

    def runner(scenario: Awaitable[None]) -> None:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.run(asyncio.wait_for(scenario, 20))

    return runner


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    """An HTTP/1.1 server whose paths each answer one way; counts the connections it accepted."""

    port: int = 0
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                seen = await read_request(reader)
                if seen is None:
                    return
                self.requests.append(seen)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                try:
                    keep_open = await self.answer(seen, reader, writer)
                finally:
                    self.in_flight -= 1
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass

    async def answer(self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Writes the answer for ``seen.path``; False when the connection must close."""
        path = seen.path.partition("?")[0]
        if path == "/hello":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Seen: one\r\nX-Seen: two\r\n\r\nhello")
        elif path == "/echo":
            writer.write(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/octet-stream\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(seen.body)
                + seen.body
            )
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for chunk in CHUNKS:  # one write each, with a pause: the client sees them apart
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        elif path == "/head":
            # A HEAD answer announces the GET body's length but carries none.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nReplay-Nonce: abc\r\n\r\n")
        elif path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye")
            return False
        elif path == "/until-close":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body ends with the connection")
            return False
        elif path == "/silent-close":  # keep-alive announced, then closed anyway
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            return False
        elif path == "/slow":
            await asyncio.sleep(0.2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        elif path == "/hang":
            await reader.read()  # until the client gives up and closes
            return False
        elif path == "/drop":
            return False
        elif path == "/big":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"b" * 1000)
        elif path in ("/endless", "/endless-chunked"):  # a body that never ends, as fast as it is read
            chunked = path == "/endless-chunked"
            writer.write(b"HTTP/1.1 200 OK\r\n" + (b"Transfer-Encoding: chunked\r\n" if chunked else b"") + b"\r\n")
            piece = b"e" * 16384
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
        elif path == "/endless-headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            while True:
                writer.write(b"X-Padding: " + b"p" * 4096 + b"\r\n")
                await writer.drain()
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return True


async def read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
    method, path, _ = request_line.split(" ")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        return Seen(method, path, headers, await read_chunks(reader))
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Seen(method, path, headers, body)


async def read_chunks(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
    await reader.readexactly(2)  # the empty line after the last, empty chunk
    return b"".join(chunks)


@asynccontextmanager
async def serving(
    tls: TlsMaterial | None = None, server_names: list[str | None] | None = None
) -> AsyncIterator[ScriptedServer]:
    """A ScriptedServer on loopback; with TLS, the SNI name of each handshake goes to ``server_names``."""
    script = ScriptedServer()
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert("server"), tls.key("server"))
        if server_names is not None:
            context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=context)
    script.port = server.sockets[0].getsockname()[1]
    try:
        yield script
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # let the handlers see their connections close


@asynccontextmanager
async def client(**options: object) -> AsyncIterator[tuple[httpx.AsyncClient, LeanTransport]]:
    context = options.pop("ssl_context", None)
    assert context is None or isinstance(context, ssl.SSLContext)
    transport = LeanTransport(ssl_context=context)
    async with httpx.AsyncClient(transport=transport, **options) as http:  # type: ignore[arg-type]
        yield http, transport


def test_sequential_requests_share_one_connection(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (http, transport):
            for _ in range(5):
                response = await http.get(f"http://127.0.0.1:{server.port}/hello")
                assert response.status_code == 200
                assert response.content == b"hello"
                assert response.headers.get_list("x-seen") == ["one", "two"]
                assert response.http_version == "HTTP/1.1"
            assert server.connections == 1
            assert transport.connections_opened == 1

    run(scenario())


def test_concurrent_requests_use_several_connections_within_the_bound(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        async with serving() as server:
            transport = LeanTransport(max_connections_per_origin=3)
            async with httpx.AsyncClient(transport=transport) as http:
                started = time.monotonic()
                responses = await asyncio.gather(*(http.get(f"http://127.0.0.1:{server.port}/slow") for _ in range(6)))
                elapsed = time.monotonic() - started
            assert [r.content for r in responses] == [b"slow"] * 6
            assert server.most_in_flight == 3  # concurrent, but never more than the bound
            assert transport.connections_opened == 3
            assert elapsed < 6 * 0.2  # in parallel: two rounds of 0.2 s, not six

    run(scenario())


def test_a_chunked_body_is_put_together(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (http, transport):
            response = await http.get(f"http://127.0.0.1:{server.port}/chunked")
            assert response.content == b"".join(CHUNKS)
            assert "content-length" not in response.headers  # nothing the server did not send
            assert (await http.get(f"http://127.0.0.1:{server.port}/hello")).content == b"hello"
            assert transport.connections_opened == 1

    run(scenario())


def test_a_head_answer_has_no_body_and_the_connection_goes_on(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (http, transport):
            for _ in range(2):
                response = await http.head(f"http://127.0.0.1:{server.port}/head")
                assert response.status_code == 200
                assert response.content == b""
                assert response.headers["Content-Length"] == "1234"
                assert response.headers["Replay-Nonce"] == "abc"
            assert (await http.get(f"http://127.0.0.1:{server.port}/hello")).content == b"hello"
            assert transport.connections_opened == 1

    run(scenario())


def test_a_request_body_is_sent_with_its_length(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (http, _):
            body = b'{"protected": "x"}' * 100
            response = await http.post(
                f"http://127.0.0.1:{server.port}/echo?q=1",
                content=body,
                headers={"Content-Type": "application/jose+json"},
            )
            assert response.status_code == 201
            assert response.content == body
            seen = server.requests[-1]
            assert (seen.method, seen.path, seen.body) == ("POST", "/echo?q=1", body)
            assert seen.headers["content-length"] == str(len(body))
            assert seen.headers["content-type"] == "application/jose+json"
            assert seen.headers["host"] == f"127.0.0.1:{server.port}"

    run(scenario())


def test_a_streamed_request_body_is_sent_chunked(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async def parts() -> AsyncIterator[bytes]:
            for part in (b"one,", b"two,", b"three"):
                yield part

        async with serving() as server, client() as (http, transport):
            response = await http.post(f"http://127.0.0.1:{server.port}/echo", content=parts())
            assert response.content == b"one,two,three"
            assert server.requests[-1].headers["transfer-encoding"] == "chunked"
            assert (await http.get(f"http://127.0.0.1:{server.port}/hello")).content == b"hello"
            assert transport.connections_opened == 1  # the body's framing was right

    run(scenario())


def test_a_request_saying_connection_close_does_not_leave_its_connection_for_others(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (http, transport):
            await http.get(f"http://127.0.0.1:{server.port}/hello", headers={"Connection": "close"})
            await http.get(f"http://127.0.0.1:{server.port}/hello")
            assert transport.connections_opened == server.connections == 2

    run(scenario())


def test_after_the_server_closes_the_next_request_opens_a_new_connection(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (http, transport):
            base = f"http://127.0.0.1:{server.port}"
            assert (await http.get(f"{base}/close")).content == b"bye"  # Connection: close
            assert (await http.get(f"{base}/hello")).content == b"hello"
            assert (await http.get(f"{base}/until-close")).content == b"the body ends with the connection"
            assert (await http.get(f"{base}/hello")).content == b"hello"
            assert (await http.get(f"{base}/silent-close")).content == b"ok"  # closed without saying so
            await asyncio.sleep(0.05)
            assert (await http.get(f"{base}/hello")).content == b"hello"
            assert server.connections == transport.connections_opened == 4

    run(scenario())


def test_a_connection_idle_too_long_is_not_reused(
    run: Callable[[Awaitable[None]], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_wire, "KEEPALIVE_EXPIRY_SECONDS", 0.05)

    async def scenario() -> None:
        async with serving() as server, client() as (http, transport):
            await http.get(f"http://127.0.0.1:{server.port}/hello")
            await http.get(f"http://127.0.0.1:{server.port}/hello")
            assert transport.connections_opened == 1
            await asyncio.sleep(0.1)
            await http.get(f"http://127.0.0.1:{server.port}/hello")
            assert transport.connections_opened == server.connections == 2

    run(scenario())


def test_a_server_hanging_up_without_an_answer_is_a_protocol_error(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (http, _):
            with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
                await http.get(f"http://127.0.0.1:{server.port}/drop")
            assert (await http.get(f"http://127.0.0.1:{server.port}/hello")).content == b"hello"

    run(scenario())


def test_connection_refused_is_a_connect_error(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server:
            port = server.port  # closed when the block ends: nothing listens there any more
        async with client() as (http, _):
            with pytest.raises(httpx.ConnectError, match=f"127.0.0.1:{port}"):
                await http.get(f"http://127.0.0.1:{port}/hello")

    run(scenario())


def test_no_answer_within_the_read_timeout_is_a_read_timeout(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client(timeout=httpx.Timeout(5.0, read=0.2)) as (http, transport):
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"http://127.0.0.1:{server.port}/hang")
            assert 0.15 < time.monotonic() - started < 2.0
            # The slow answer below takes as long as the read timeout, in three pieces: a
            # timeout between bytes, not for the whole answer.
            assert (await http.get(f"http://127.0.0.1:{server.port}/chunked")).content == b"".join(CHUNKS)
            assert transport.connections_opened == 2  # the timed-out connection was not reused

    run(scenario())


def test_the_connect_timeout_is_a_connect_timeout(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        # A server that accepts and never speaks: the TLS handshake, part of connecting, hangs.
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with client(ssl_context=ssl.create_default_context(), timeout=httpx.Timeout(5.0, connect=0.2)) as (
                http,
                _,
            ):
                with pytest.raises(httpx.ConnectTimeout):
                    await http.get(f"https://127.0.0.1:{port}/hello")
        finally:
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)

    run(scenario())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return ensure_tls_material(tmp_path_factory.mktemp("tls"), {"server": ["localhost", "127.0.0.1"]})


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tls_material(tmp_path_factory.mktemp("foreign"), {}).ca


def test_tls_with_the_right_ca_keeps_one_connection(run: Callable[[Awaitable[None]], None], tls: TlsMaterial) -> None:
    async def scenario() -> None:
        async with (
            serving(tls) as server,
            client(ssl_context=ssl.create_default_context(cafile=tls.ca)) as (
                http,
                transport,
            ),
        ):
            for host in ("localhost", "localhost", "localhost"):
                response = await http.post(f"https://{host}:{server.port}/echo", content=b"signed")
                assert response.content == b"signed"
            assert transport.connections_opened == server.connections == 1

    run(scenario())


def test_tls_with_a_wrong_ca_is_a_connect_error(
    run: Callable[[Awaitable[None]], None], tls: TlsMaterial, foreign_ca: Path
) -> None:
    async def scenario() -> None:
        async with (
            serving(tls) as server,
            client(ssl_context=ssl.create_default_context(cafile=foreign_ca)) as (
                http,
                _,
            ),
        ):
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await http.get(f"https://localhost:{server.port}/hello")
            assert server.requests == []

    run(scenario())


def test_closing_the_transport_closes_its_connections(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server:
            transport = LeanTransport()
            http = httpx.AsyncClient(transport=transport)
            await http.get(f"http://127.0.0.1:{server.port}/hello")
            pool = next(iter(transport._pools.values()))
            connection = pool.idle[0]
            await http.aclose()
            await asyncio.sleep(0.05)
            assert connection.lost
            assert transport._pools == {}

    run(scenario())


@asynccontextmanager
async def lean_client(**options: object) -> AsyncIterator[tuple[httpx.AsyncClient, LeanTransport]]:
    """A client whose transport takes ``options`` (keepalive, max_body_bytes, max_head_bytes)."""
    transport = LeanTransport(**options)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport) as http:
        yield http, transport


def test_without_keepalive_each_request_has_its_own_connection(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, lean_client(keepalive=False) as (http, transport):
            for _ in range(3):
                assert (await http.get(f"http://127.0.0.1:{server.port}/hello")).content == b"hello"
            assert server.connections == transport.connections_opened == 3
            assert transport._pools == {}  # nothing kept per origin once its requests are done

    run(scenario())


def test_a_body_past_max_body_bytes_is_cut_and_its_connection_closed(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, lean_client(max_body_bytes=100) as (http, transport):
            response = await http.get(f"http://127.0.0.1:{server.port}/big")
            assert response.content == b"b" * 100
            assert response.extensions["body_truncated"] is True
            whole = await http.get(f"http://127.0.0.1:{server.port}/hello")
            assert whole.content == b"hello"
            assert "body_truncated" not in whole.extensions
            assert transport.connections_opened == 2  # the cut connection, mid-body, was not reused

    run(scenario())


def test_a_body_of_exactly_max_body_bytes_is_whole(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, lean_client(max_body_bytes=5) as (http, transport):
            for _ in range(2):
                response = await http.get(f"http://127.0.0.1:{server.port}/hello")
                assert response.content == b"hello"
                assert "body_truncated" not in response.extensions
            assert transport.connections_opened == 1

    run(scenario())


@pytest.mark.parametrize("path", ["/endless", "/endless-chunked"])
def test_an_endless_body_ends_at_max_body_bytes(run: Callable[[Awaitable[None]], None], path: str) -> None:
    async def scenario() -> None:
        async with serving() as server, lean_client(max_body_bytes=65536, keepalive=False) as (http, _):
            started = time.monotonic()
            response = await http.get(f"http://127.0.0.1:{server.port}{path}")
            assert time.monotonic() - started < 2.0
            assert response.content == b"e" * 65536
            assert response.extensions["body_truncated"] is True

    run(scenario())


def test_headers_past_max_head_bytes_are_a_protocol_error(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, lean_client(max_head_bytes=16384) as (http, _):
            with pytest.raises(httpx.RemoteProtocolError, match="headers longer than 16384 bytes"):
                await http.get(f"http://127.0.0.1:{server.port}/endless-headers")
            assert (await http.get(f"http://127.0.0.1:{server.port}/hello")).content == b"hello"

    run(scenario())


def test_the_sni_hostname_extension_names_the_tls_server(
    run: Callable[[Awaitable[None]], None], tls: TlsMaterial
) -> None:
    async def scenario() -> None:
        names: list[str | None] = []
        async with (
            serving(tls, names) as server,
            client(ssl_context=ssl.create_default_context(cafile=tls.ca)) as (http, transport),
        ):
            url = f"https://127.0.0.1:{server.port}/hello"
            for _ in range(2):
                assert (await http.get(url, extensions={"sni_hostname": "localhost"})).content == b"hello"
            assert (await http.get(url)).content == b"hello"
            # One connection per server name: a connection made for one name is not used for another.
            assert transport.connections_opened == 2
            assert names == ["localhost", None]  # an address is never sent as SNI

    run(scenario())


# send(): the same exchange without httpx's request and response objects --------------------------


def test_send_writes_what_httpx_would_and_shares_the_pool(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (http, transport):
            url = f"http://127.0.0.1:{server.port}/echo?q=1&r=a%2Fb"
            body = b'{"protected": "x"}' * 10
            headers = {"Content-Type": "application/jose+json", "User-Agent": "t/1"}
            await http.post(url, content=body, headers=headers)
            through_httpx = server.requests[-1]
            answer = await transport.send("POST", url, [(k.encode(), v.encode()) for k, v in headers.items()], body)
            straight = server.requests[-1]
            assert (answer.status, answer.body) == (201, body)
            assert (straight.method, straight.path, straight.body) == ("POST", "/echo?q=1&r=a%2Fb", body)
            for name in ("host", "content-length", "content-type", "user-agent"):
                assert straight.headers[name] == through_httpx.headers[name], name
            await transport.send("GET", f"http://127.0.0.1:{server.port}/hello")
            assert "content-length" not in server.requests[-1].headers  # as httpx: none on a bodiless GET
            assert server.connections == 1 and transport.connections_opened == 1

    run(scenario())


def test_send_head_reads_no_body_and_keeps_the_connection(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (_, transport):
            head = await transport.send("HEAD", f"http://127.0.0.1:{server.port}/head")
            assert (head.status, head.body) == (200, b"")
            assert head.headers == [(b"Content-Length", b"1234"), (b"Replay-Nonce", b"abc")]
            hello = await transport.send("GET", f"http://127.0.0.1:{server.port}/hello")
            assert (hello.status, hello.body) == (200, b"hello")
            assert server.connections == 1

    run(scenario())


def test_send_host_header_has_no_userinfo(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client() as (_, transport):
            await transport.send("GET", f"http://user@127.0.0.1:{server.port}/hello")
            assert server.requests[-1].headers["host"] == f"127.0.0.1:{server.port}"
            assert server.requests[-1].path == "/hello"

    run(scenario())


def test_send_fails_as_httpx_would(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        async with serving() as server:
            port = server.port
        async with client() as (_, transport):
            with pytest.raises(httpx.ConnectError, match=f"127.0.0.1:{port}"):
                await transport.send("GET", f"http://127.0.0.1:{port}/hello")
            with pytest.raises(httpx.UnsupportedProtocol):
                await transport.send("GET", f"ftp://127.0.0.1:{port}/hello")
        async with serving() as server, client() as (_, transport):
            with pytest.raises(httpx.ReadTimeout):
                await transport.send("GET", f"http://127.0.0.1:{server.port}/hang", timeouts={"read": 0.1})
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.send("GET", f"http://127.0.0.1:{server.port}/drop")

    run(scenario())
