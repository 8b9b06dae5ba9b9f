"""HTTP limits of the ACME port, against the real frontend (TLS) with raw sockets: a huge request
line, 20,000 headers, a huge header, slowloris, a slow body, an idle connection, bodies over the
cap (declared and streamed). Each: the exact status and problem type, how long it took, the
frontend's memory, and that the services are still up. Limits: docs/security.md "HTTP limits".
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import orjson

from tests.hostile.conftest import Timer, assert_still_up
from tests.support.lab import Lab

# Defaults of the settings (libs/acme_ra/config.py), as `make dev` and the lab run them.
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 5.0
MAX_BODY = 50_000
# The frontend's resident memory may grow this much while it is sent 20 MiB (bytes).
MEMORY_SLACK = 16 * 1024 * 1024


def connect(lab: Lab) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(lab.ca_bundle))
    raw = socket.create_connection(("127.0.0.1", lab.ports.frontend), timeout=60)
    return context.wrap_socket(raw, server_hostname="localhost")


def frontend_rss(lab: Lab) -> int:
    pid = lab.topology.services["frontend"].process.pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_all(conn: ssl.SSLSocket, answer: bytes = b"") -> bytes:
    try:
        while chunk := conn.recv(65536):
            answer += chunk
    except (ConnectionResetError, ssl.SSLError, TimeoutError):
        pass
    return answer


def answer_started(conn: ssl.SSLSocket) -> bytes | None:
    """What the server has answered so far (b"" when it closed), or None: nothing yet. (The
    socket may be readable with TLS records that carry no data: TLS 1.3 session tickets.)"""
    if not select.select([conn], [], [], 0)[0] and not conn.pending():
        return None
    conn.setblocking(False)
    try:
        return conn.recv(65536)
    except ssl.SSLWantReadError:
        return None
    except (ConnectionResetError, ssl.SSLError):
        return b""
    finally:
        conn.settimeout(60)


def send_until_answered(conn: ssl.SSLSocket, parts: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``parts`` until the server answers (or closes); what it answered and how much was sent."""
    sent = 0
    for part in parts:
        started = answer_started(conn)
        if started is not None:
            return read_all(conn, started) if started else b"", sent
        try:
            conn.sendall(part)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            break
        sent += len(part)
    return read_all(conn), sent


def status_and_problem(answer: bytes) -> tuple[int, dict[str, object], bytes]:
    assert answer, "the server closed the connection without an answer"
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    return int(head.split(b" ", 2)[1]), orjson.loads(body), head


def assert_malformed(answer: bytes, status: int) -> bytes:
    got, problem, head = status_and_problem(answer)
    assert got == status, answer[:500]
    assert problem["type"] == "urn:ietf:params:acme:error:malformed" and problem["status"] == status, problem
    assert b"content-type: application/problem+json" in head.lower()
    return head


def chunks(prefix: bytes, filler: bytes, total: int, size: int = 65536) -> Iterator[bytes]:
    yield prefix
    block = filler * (size // len(filler))
    for _ in range(total // len(block)):
        yield block


def test_twenty_mib_request_line_is_414_and_memory_stays_bounded(lab: Lab) -> None:
    before = frontend_rss(lab)
    with Timer() as timer, connect(lab) as conn:
        answer, sent = send_until_answered(conn, chunks(b"GET /acme/acme/directory?", b"a", 20 * 1024 * 1024))
    assert_malformed(answer, 414)
    timer.assert_quick()
    assert sent < 8 * 1024 * 1024, f"{sent} bytes were sent before the answer"
    assert frontend_rss(lab) - before < MEMORY_SLACK
    assert_still_up(lab)


def test_twenty_thousand_headers_are_431(lab: Lab) -> None:
    before = frontend_rss(lab)
    headers = b"".join(b"X-Filler-%05d: v\r\n" % i for i in range(20_000))
    with Timer() as timer, connect(lab) as conn:
        answer, _ = send_until_answered(conn, iter([b"GET /acme/acme/directory HTTP/1.1\r\nHost: localhost\r\n",
                                                    *(headers[i:i + 8192] for i in range(0, len(headers), 8192)),
                                                    b"\r\n"]))
    assert_malformed(answer, 431)
    timer.assert_quick()
    assert frontend_rss(lab) - before < MEMORY_SLACK
    assert_still_up(lab)


def test_twenty_mib_header_is_431_and_memory_stays_bounded(lab: Lab) -> None:
    before = frontend_rss(lab)
    with Timer() as timer, connect(lab) as conn:
        answer, sent = send_until_answered(
            conn, chunks(b"GET /acme/acme/directory HTTP/1.1\r\nHost: localhost\r\nX-Big: ", b"b", 20 * 1024 * 1024))
    assert_malformed(answer, 431)
    timer.assert_quick()
    assert sent < 8 * 1024 * 1024 and frontend_rss(lab) - before < MEMORY_SLACK
    assert_still_up(lab)


def test_slowloris_headers_are_408_at_the_header_timeout(lab: Lab) -> None:
    with Timer() as timer, connect(lab) as conn:
        conn.sendall(b"GET /acme/acme/directory HTTP/1.1\r\n")
        answer = b""
        for number in range(int(HEADER_TIMEOUT * 3)):  # one header every 0.5 s, for ever
            time.sleep(0.5)
            started = answer_started(conn)
            if started is not None:
                answer = started
                break
            try:
                conn.sendall(b"X-%d: 1\r\n" % number)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                break
        answered_after = time.monotonic() - timer.started
        answer = read_all(conn, answer) if answer else answer
    assert_malformed(answer, 408)
    assert HEADER_TIMEOUT - 1 < answered_after < HEADER_TIMEOUT + 2, answered_after
    assert_still_up(lab)


def test_idle_connection_is_closed_at_the_idle_timeout(lab: Lab) -> None:
    for first in (b"", b"GET /acme/acme/directory HTTP/1.1\r\nHost: localhost\r\n\r\n"):
        with Timer() as timer, connect(lab) as conn:
            conn.sendall(first)
            answer = read_all(conn)  # blocks until the server closes
        assert answer.startswith(b"HTTP/1.1 200") if first else answer == b"", answer[:200]
        assert IDLE_TIMEOUT - 1 < timer.elapsed < IDLE_TIMEOUT + 3, timer.elapsed
    assert_still_up(lab)


def test_declared_body_over_the_cap_is_413_with_a_nonce_before_it_is_sent(lab: Lab) -> None:
    with Timer() as timer, connect(lab) as conn:
        conn.sendall(b"POST /acme/acme/new-order HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/jose+json\r\nContent-Length: 1000000000\r\n\r\n")
        head = assert_malformed(read_all(conn), 413)
    timer.assert_quick()
    assert b"replay-nonce: " in head.lower()
    assert_still_up(lab)


def test_streamed_body_over_the_cap_is_413_with_a_nonce(lab: Lab) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(2000):  # 20 MB, chunked
            yield b"x" * 10_000

    with Timer() as timer, httpx.Client(verify=ssl.create_default_context(cafile=str(lab.ca_bundle)), timeout=30) as http:
        directory = http.get(lab.directory_url).json()
        for url in (directory["newAccount"], directory["newOrder"], lab.directory_url):
            try:
                response = http.post(url, content=body(), headers={"Content-Type": "application/jose+json"})
            except httpx.WriteError:  # the server answered and closed while the client was still sending
                continue
            assert response.status_code == 413, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"] == "urn:ietf:params:acme:error:malformed"
            assert response.headers["replay-nonce"]
    timer.assert_quick(15)
    assert_still_up(lab)


def test_limits_follow_their_settings(own_lab: Callable[..., AbstractContextManager[Lab]]) -> None:
    with own_lab(ACME_RA_HTTP_MAX_HEADER_COUNT="20", ACME_RA_HTTP_BODY_TIMEOUT_SECONDS="2",
                 ACME_RA_HTTP_MAX_REQUEST_LINE_BYTES="1024", ACME_RA_HTTP_MAX_BODY_BYTES="2000") as lab:
        with connect(lab) as conn:
            headers = b"".join(b"X-%d: 1\r\n" % i for i in range(21))
            conn.sendall(b"GET /acme/acme/directory HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
            assert_malformed(read_all(conn), 431)
        with connect(lab) as conn:
            conn.sendall(b"GET /acme/acme/directory?" + b"q" * 1100 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert_malformed(read_all(conn), 414)
        with Timer() as timer, connect(lab) as conn:  # a slow body: 10 of 100 bytes, then nothing
            conn.sendall(b"POST /acme/acme/new-order HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Type: application/jose+json\r\nContent-Length: 100\r\n\r\n0123456789")
            assert_malformed(read_all(conn), 408)
        assert 1 < timer.elapsed < 5, timer.elapsed
        with connect(lab) as conn:
            conn.sendall(b"POST /acme/acme/new-order HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Type: application/jose+json\r\nContent-Length: 2001\r\n\r\n")
            assert b"replay-nonce: " in assert_malformed(read_all(conn), 413).lower()
        assert_still_up(lab)
        frontend_log = (lab.topology.log_dir / "frontend.log").read_text(errors="replace")
        assert "Traceback" not in frontend_log, frontend_log[-5000:]
