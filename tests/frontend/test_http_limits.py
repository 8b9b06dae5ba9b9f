"""HTTP limits (acme_ra_frontend/http_limits.py): the protocol class under a real uvicorn on a
loopback port, driven with raw sockets; the body cap through the frontend app in-process.
tests/hostile/test_http_limits.py drives the same limits through the real frontend (TLS)."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from acme_ra_frontend.http_limits import HttpLimits, limited_protocol
from tests.conformance.client import TestAcmeClient

LIMITS = HttpLimits(max_request_line_bytes=1024, max_header_count=20, max_header_bytes=4096, max_body_bytes=50_000,
                    header_timeout=1.0, body_timeout=1.0, idle_timeout=1.0)


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body and answers its length."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(echo_app, log_config=None, access_log=False, lifespan="off", http=limited_protocol(LIMITS),
                            timeout_keep_alive=LIMITS.idle_timeout)  # type: ignore[arg-type]
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.01)
    yield port
    instance.should_exit = True
    thread.join(10)
    sock.close()


def exchange(port: int, data: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes; the bytes read and the seconds until the
    first of them came (or the close, when none came)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        try:
            conn.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer, first = b"", None
        try:
            while chunk := conn.recv(65536):
                first = first or time.monotonic()
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, (first or time.monotonic()) - started


def status_and_problem(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"connection: close" in head.lower(), head
    return status, orjson.loads(body)


def test_ordinary_requests_keep_alive_and_pipeline(server: int) -> None:
    one = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    two = b"GET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    answer, _ = exchange(server, one + two)
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer
    assert answer.split(b"\r\n\r\n")[1].startswith(b"5")


def test_long_request_line_is_414(server: int) -> None:
    answer, took = exchange(server, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    status, problem = status_and_problem(answer)
    assert status == 414 and problem["type"] == "urn:ietf:params:acme:error:malformed" and took < 2


def test_a_refusal_on_a_kept_alive_connection_is_answered(server: int) -> None:
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(21))
    with socket.create_connection(("127.0.0.1", server), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        conn.sendall(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 431")


def test_too_many_headers_is_431(server: int) -> None:
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(21))
    status, problem = status_and_problem(exchange(server, b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")[0])
    assert status == 431 and problem["status"] == 431


def test_oversized_head_is_431_before_it_is_read_whole(server: int) -> None:
    status, _ = status_and_problem(exchange(server, b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 1_000_000 + b"\r\n\r\n")[0])
    assert status == 431


def test_slow_headers_are_408(server: int) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\n")
        for _ in range(30):  # a header byte every 0.1 s: never complete
            if select.select([conn], [], [], 0.1)[0]:
                break
            conn.sendall(b"X")
        answered = time.monotonic() - started
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert status_and_problem(answer)[0] == 408
    assert LIMITS.header_timeout - 0.2 < answered < LIMITS.header_timeout + 0.5


def test_slow_body_is_408(server: int) -> None:
    answer, took = exchange(server, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    assert status_and_problem(answer)[0] == 408 and took < LIMITS.body_timeout + 1


@pytest.mark.parametrize("first", [b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"])
def test_idle_connections_are_closed(server: int, first: bytes) -> None:
    started = time.monotonic()
    answer, _ = exchange(server, first)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 200") if first else answer == b""
    assert LIMITS.idle_timeout - 0.1 < took < LIMITS.idle_timeout + 1


# The body cap through the frontend app -----------------------------------------------------------

async def test_declared_body_over_the_cap_is_413_with_a_nonce(account: TestAcmeClient) -> None:
    response = await account.http.post(account.directory["newOrder"], content=b"{}",
                                       headers={"Content-Type": "application/jose+json", "Content-Length": "50001"})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:ietf:params:acme:error:malformed"
    assert response.headers["replay-nonce"] and response.headers["connection"] == "close"
    assert 'rel="index"' in response.headers["link"]


async def test_streamed_body_over_the_cap_is_413_with_a_nonce(account: TestAcmeClient) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 10_000
            yield b"x" * 10_000
            await asyncio.sleep(0)

    for url in (account.directory["newOrder"], account.directory["newAccount"], account.directory_url):
        response = await account.http.post(url, content=chunks(), headers={"Content-Type": "application/jose+json"})
        assert response.status_code == 413, (url, response.text)
        assert response.json()["type"] == "urn:ietf:params:acme:error:malformed"
        assert response.headers["replay-nonce"]


async def test_body_under_the_cap_is_read(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "limits.example.org"}]})
    assert reply.status == 201, reply.text
