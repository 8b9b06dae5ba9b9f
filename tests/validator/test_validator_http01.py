"""http-01 against real HTTP servers on loopback: the HttpLab of conftest for well-behaved ones,
``raw_server`` handlers written here for servers that misbehave (endless bodies or headers,
silence, garbage, TLS where none is spoken)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from cryptography import x509

from acme_ra_validator import http01
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.http01 import MAX_BODY_BYTES, ValidationPorts, check_http01, new_http_client
from acme_ra_validator.network import NetworkPolicy
from acme_ra_validator.resolver import NameResolver

from .conftest import LAB_POLICY, DnsLab, HttpLab, TlsLab, challenge_certificate, unused_port

TOKEN = "tok-123"
KEY_AUTH = "tok-123.thumbprint-abc"
PATH = "/.well-known/acme-challenge/" + TOKEN


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client() as http:
        yield http


async def check(client: httpx.AsyncClient, port: int, host: str = "myhost.localhost",
                resolver: NameResolver | None = None, policy: NetworkPolicy = LAB_POLICY,
                tls_port: int = 443) -> None:
    ports = ValidationPorts(http=port, tls=tls_port)
    await check_http01(client, resolver or NameResolver([]), policy, ports, host, TOKEN, KEY_AUTH)


async def test_success_with_trailing_whitespace(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (200, {}, (KEY_AUTH + "\r\n").encode())
    await check(client, http_lab.port)
    assert http_lab.requests == [(PATH, f"myhost.localhost:{http_lab.port}")]


async def test_asks_for_an_uncompressed_answer(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    # A compressed body is decoded whole before the body cap applies: never ask for one.
    http_lab.routes[PATH] = (200, {}, KEY_AUTH.encode())
    await check(client, http_lab.port)
    assert http_lab.headers[0]["accept-encoding"] == "identity"


async def test_wrong_content(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (200, {}, b"something else")
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port)
    assert failure.value.type == "unauthorized"
    assert failure.value.detail == (
        "The key authorization file from the server did not match this challenge: "
        f'expected "{KEY_AUTH}" got "something else"'
    )


async def test_wrong_status(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port)
    assert failure.value.type == "unauthorized"
    assert "HTTP 404" in failure.value.detail


async def test_connection_refused(client: httpx.AsyncClient) -> None:
    with pytest.raises(ValidationFailure) as failure:
        await check(client, unused_port())
    assert failure.value.type == "connection"
    assert "Connection refused" in failure.value.detail


async def test_next_address_is_tried(client: httpx.AsyncClient, http_lab: HttpLab, dns_lab: DnsLab) -> None:
    # The server listens on 127.0.0.1 only: 127.0.0.2 refuses, then 127.0.0.1 answers.
    dns_lab.zone.add("multi.example.test. 60 IN A 127.0.0.2")
    dns_lab.zone.add("multi.example.test. 60 IN A 127.0.0.1")
    http_lab.routes[PATH] = (200, {}, KEY_AUTH.encode())
    await check(client, http_lab.port, "multi.example.test", dns_lab.resolver())
    assert http_lab.requests == [(PATH, f"multi.example.test:{http_lab.port}")]


async def test_name_that_does_not_resolve(client: httpx.AsyncClient, dns_lab: DnsLab) -> None:
    with pytest.raises(ValidationFailure) as failure:
        await check(client, 80, "nothing.example.test", dns_lab.resolver())
    assert failure.value.type == "dns"
    assert "nothing.example.test" in failure.value.detail


async def test_redirect_on_same_port_is_followed(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (302, {"Location": "/elsewhere"}, b"")
    http_lab.routes["/elsewhere"] = (200, {}, KEY_AUTH.encode())
    await check(client, http_lab.port)
    assert [path for path, _ in http_lab.requests] == [PATH, "/elsewhere"]


@pytest.mark.parametrize(
    "location",
    [
        "https://myhost.localhost:8443/x",
        "http://myhost.localhost:1/x",
        "http://127.0.0.1/x",
        "ftp://myhost.localhost/x",
    ],
)
async def test_redirect_elsewhere_is_refused(client: httpx.AsyncClient, http_lab: HttpLab, location: str) -> None:
    http_lab.routes[PATH] = (301, {"Location": location}, b"")
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port)
    assert failure.value.type == "connection"
    assert "not followed" in failure.value.detail


async def test_redirect_loop(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (302, {"Location": PATH}, b"")
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port)
    assert "too many redirects" in failure.value.detail
    assert len(http_lab.requests) == 11


async def test_body_is_read_up_to_the_limit(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (200, {}, KEY_AUTH.encode() + b"x" * (4 * MAX_BODY_BYTES))
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port)
    assert failure.value.type == "unauthorized"
    assert len(failure.value.detail) < 400


async def test_ip_identifier_is_fetched_from_the_ip_itself(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (200, {}, KEY_AUTH.encode())
    # A resolver that would time out: an IP identifier must not cause any DNS query.
    await check(client, http_lab.port, "127.0.0.1", NameResolver([("127.0.0.1", 9)], lifetime=3.0))
    assert http_lab.requests == [(PATH, f"127.0.0.1:{http_lab.port}")]


async def test_ipv6_identifier_host_header_is_bracketed(client: httpx.AsyncClient) -> None:
    lab = HttpLab(routes={PATH: (200, {}, KEY_AUTH.encode())})
    try:
        server = await asyncio.start_server(lab.serve, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    lab.port = server.sockets[0].getsockname()[1]
    try:
        await check(client, lab.port, "::1")
    finally:
        server.close()
        await server.wait_closed()
    assert lab.requests == [(PATH, f"[::1]:{lab.port}")]


async def test_loopback_is_refused_by_default(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (200, {}, KEY_AUTH.encode())
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port, policy=NetworkPolicy())
    assert failure.value.to_data() == {
        "type": "connection",
        "detail": "127.0.0.1 is in a network the validator may not reach (ACME_RA_VALIDATION_DENY_NETWORKS)",
    }
    assert http_lab.requests == []


@pytest.mark.parametrize("address", ["169.254.169.254", "10.1.2.3", "fd00::1", "100.64.0.1", "0.0.0.0"])
async def test_refused_address_is_never_dialled(client: httpx.AsyncClient, dns_lab: DnsLab, address: str) -> None:
    # Refused before connecting: no connect timeout towards unroutable addresses.
    dns_lab.zone.add(f"inside.example.test. 60 IN {'AAAA' if ':' in address else 'A'} {address}")
    started = time.monotonic()
    with pytest.raises(ValidationFailure) as failure:
        await check(client, 80, "inside.example.test", dns_lab.resolver())
    assert failure.value.type == "connection"
    assert f"{address} is in a network the validator may not reach" in failure.value.detail
    assert time.monotonic() - started < 1.5


async def test_only_permitted_addresses_are_dialled(
    client: httpx.AsyncClient, http_lab: HttpLab, dns_lab: DnsLab
) -> None:
    # 10.0.0.1 would hang (unroutable here) or hit an internal host: it is skipped.
    dns_lab.zone.add("mixed.example.test. 60 IN A 10.0.0.1")
    dns_lab.zone.add("mixed.example.test. 60 IN A 127.0.0.1")
    http_lab.routes[PATH] = (200, {}, KEY_AUTH.encode())
    await check(client, http_lab.port, "mixed.example.test", dns_lab.resolver())
    assert len(http_lab.requests) == 1


async def test_redirect_target_is_checked_against_the_policy(
    client: httpx.AsyncClient, http_lab: HttpLab, dns_lab: DnsLab
) -> None:
    dns_lab.zone.add("metadata.example.test. 60 IN A 169.254.169.254")
    http_lab.routes[PATH] = (302, {"Location": f"http://metadata.example.test:{http_lab.port}/latest"}, b"")
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port, policy=LAB_POLICY, resolver=dns_lab.resolver())
    assert "169.254.169.254 is in a network the validator may not reach" in failure.value.detail


async def test_https_redirect_to_the_tls_port_is_followed_without_verification(
    client: httpx.AsyncClient, http_lab: HttpLab, tls_lab: TlsLab
) -> None:
    https = HttpLab(routes={"/over-tls": (200, {}, KEY_AUTH.encode())})
    # Self-signed, for another name: validation does not verify the certificate.
    certificate, key = challenge_certificate([x509.DNSName("unrelated.example")], None)
    tls_port = await tls_lab.serve(certificate, key, alpn=("http/1.1",), handler=https.serve)
    http_lab.routes[PATH] = (301, {"Location": f"https://myhost.localhost:{tls_port}/over-tls"}, b"")
    await check(client, http_lab.port, tls_port=tls_port)
    assert https.requests == [("/over-tls", f"myhost.localhost:{tls_port}")]
    assert tls_lab.server_names == ["myhost.localhost"]


async def test_https_redirect_to_another_port_is_refused(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (301, {"Location": f"https://myhost.localhost:{http_lab.port}/x"}, b"")
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port, tls_port=8443)
    assert failure.value.type == "connection"
    assert f"redirect to https port {http_lab.port} is not followed" in failure.value.detail


async def test_overlong_redirect_is_refused(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (302, {"Location": "/" + "a" * 2100}, b"")
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port)
    assert "longer than 2000" in failure.value.detail


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[int]:
    """A loopback server running ``handler`` per connection; yields its port. Its connections are
    cut and its handlers finished before it returns: nothing outlives the test."""
    handlers: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
        for writer in writers:  # a handler still reading or writing sees its connection lost
            writer.transport.abort()
        await asyncio.gather(*handlers)


async def read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


def endless_body(framing: bytes, chunked: bool) -> RawHandler:
    """Answers 200 with the key authorization followed by bytes that never end."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n")
        piece = KEY_AUTH.encode() + b"x" * 16384
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()

    return handler


@pytest.mark.parametrize(
    ("framing", "chunked"),
    [
        (b"Content-Type: text/plain\r\n", False),  # the body ends with the connection: never
        (b"Content-Length: 10000000000\r\n", False),
        (b"Transfer-Encoding: chunked\r\n", True),
    ],
    ids=["until-close", "huge-length", "chunked"],
)
async def test_an_endless_body_is_cut_at_the_limit(client: httpx.AsyncClient, framing: bytes, chunked: bool) -> None:
    async with raw_server(endless_body(framing, chunked)) as port:
        started = time.monotonic()
        with pytest.raises(ValidationFailure) as failure:
            await check(client, port)
        assert time.monotonic() - started < 2.0  # not the read timeout: the body was cut, not waited for
    assert failure.value.type == "unauthorized"
    assert f'got "{KEY_AUTH}xxx' in failure.value.detail
    assert len(failure.value.detail) < 400


async def test_a_body_of_exactly_the_limit_is_read_whole(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (200, {}, KEY_AUTH.encode() + b" " * (MAX_BODY_BYTES - len(KEY_AUTH)))
    await check(client, http_lab.port)  # the padding is trailing whitespace


async def test_endless_headers_are_cut_at_the_limit(client: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:
            writer.write(b"X-Padding: " + b"a" * 4096 + b"\r\n")
            await writer.drain()

    async with raw_server(handler) as port:
        with pytest.raises(ValidationFailure) as failure:
            await check(client, port)
    assert failure.value.to_data() == {
        "type": "connection",
        "detail": f"127.0.0.1: Fetching http://myhost.localhost:{port}{PATH}: Error reading the response "
        f"(response headers longer than {http01.MAX_HEAD_BYTES} bytes)",
    }


async def test_a_malformed_response_is_an_error_reading_the_response(client: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()

    async with raw_server(handler) as port:
        with pytest.raises(ValidationFailure) as failure:
            await check(client, port)
    assert failure.value.type == "connection"
    assert failure.value.detail.endswith("Error reading the response")


async def test_a_silent_server_is_a_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http01, "READ_TIMEOUT_SECONDS", 0.3)

    async def handler(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the validator gives up and closes

    async with raw_server(handler) as port, new_http_client() as client:
        started = time.monotonic()
        with pytest.raises(ValidationFailure) as failure:
            await check(client, port)
        assert 0.25 < time.monotonic() - started < 3.0
    assert failure.value.type == "connection"
    assert failure.value.detail.endswith("Timeout during read")


async def test_each_validation_opens_a_fresh_connection(client: httpx.AsyncClient) -> None:
    connections: list[int] = []

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        body = KEY_AUTH.encode()
        while True:  # answers as long as the client asks on this connection
            await read_head(reader)
            connections[-1] += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async with raw_server(keep_alive) as port:
        await check(client, port)
        await check(client, port)
    assert connections == [1, 1]


async def test_an_https_redirect_to_a_server_without_tls_is_a_connection_failure(
    client: httpx.AsyncClient, http_lab: HttpLab
) -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the ClientHello, answered in plain HTTP
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with raw_server(plain) as tls_port:
        http_lab.routes[PATH] = (301, {"Location": f"https://127.0.0.1:{tls_port}/x"}, b"")
        with pytest.raises(ValidationFailure) as failure:
            await check(client, http_lab.port, "127.0.0.1", tls_port=tls_port)
    assert failure.value.to_data() == {
        "type": "connection",
        "detail": f"127.0.0.1: Fetching https://127.0.0.1:{tls_port}/x: Connection refused or unreachable",
    }


async def test_a_tls_handshake_that_hangs_is_a_connect_timeout(
    monkeypatch: pytest.MonkeyPatch, http_lab: HttpLab
) -> None:
    monkeypatch.setattr(http01, "CONNECT_TIMEOUT_SECONDS", 0.3)

    async def mute(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_server(mute) as tls_port, new_http_client() as client:
        http_lab.routes[PATH] = (301, {"Location": f"https://127.0.0.1:{tls_port}/x"}, b"")
        with pytest.raises(ValidationFailure) as failure:
            await check(client, http_lab.port, "127.0.0.1", tls_port=tls_port)
    assert failure.value.type == "connection"
    assert failure.value.detail.endswith("Timeout during connect")
