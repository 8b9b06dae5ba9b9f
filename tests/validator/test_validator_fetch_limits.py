"""What an http-01 server of an attacker's can cost the validator: bounded decoded bytes (a gzip
bomb), redirects (a loop, forbidden ports and schemes), total time (a server dribbling bytes),
header size and count; and a job that failed or crashed validators N times is abandoned.
Real servers on 127.0.0.1 (tests/support/hostile_http.py), no mocks of the fetch."""

from __future__ import annotations

import datetime as dt
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra_validator import http01
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.http01 import MAX_BODY_BYTES, ValidationPorts, check_http01, new_http_client
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.worker import ChallengeToCheck, ChallengeValidator, ValidationOptions
from tests.support.hostile_http import HostileChallengeServer, gzip, gzip_bomb

from .conftest import LAB_POLICY, HttpLab
from .rows import insert_pending_order, snapshot

TOKEN = "tok-limits"
KEY_AUTH = "tok-limits.thumbprint-abc"
PATH = "/.well-known/acme-challenge/" + TOKEN
# The most a hostile answer may make the validator allocate (tracemalloc's peak).
MEMORY_BOUND_BYTES = 8 << 20


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client() as http:
        yield http


@pytest.fixture
async def hostile() -> AsyncIterator[HostileChallengeServer]:
    server = HostileChallengeServer(key_authorizations={TOKEN: KEY_AUTH})
    async with server.running():
        yield server


async def check(client: httpx.AsyncClient, port: int, tls_port: int = 443) -> None:
    ports = ValidationPorts(http=port, tls=tls_port)
    await check_http01(client, NameResolver([]), LAB_POLICY, ports, "myhost.localhost", TOKEN, KEY_AUTH)


async def failure_of(client: httpx.AsyncClient, port: int) -> tuple[ValidationFailure, float, int]:
    """The failure, how long it took, and the peak of Python memory allocated meanwhile."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ValidationFailure) as failure:
            await check(client, port)
        return failure.value, time.monotonic() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_bomb_is_what_the_issue_describes() -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 4096
    inner = zlib.decompress(bomb, zlib.MAX_WBITS | 16)  # ~1 MiB
    assert int.from_bytes(inner[-4:], "little") == 1 << 30  # gzip's ISIZE: 1 GiB decoded
    assert zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(inner, 1 << 20) == bytes(1 << 20)


async def test_a_gzip_gzip_bomb_is_refused_without_inflating_it(
    client: httpx.AsyncClient, hostile: HostileChallengeServer
) -> None:
    hostile.modes[TOKEN] = "bomb"
    failure, took, peak = await failure_of(client, hostile.port)
    assert failure.to_data() == {
        "type": "unauthorized",
        "detail": f"Invalid response from http://myhost.localhost:{hostile.port}{PATH}: Content-Encoding "
        '"gzip, gzip" is not accepted (the validator asks for identity and decodes at most one gzip or '
        "deflate layer)",
    }
    assert peak < MEMORY_BOUND_BYTES and took < 2.0


async def test_one_gzip_layer_of_a_bomb_is_inflated_to_the_body_cap_only(
    client: httpx.AsyncClient, http_lab: HttpLab
) -> None:
    # The inner layer of the bomb alone: 1 MiB that inflates to 1 GiB. The raw body is cut at
    # MAX_BODY_BYTES, and what that inflates to at MAX_BODY_BYTES again.
    inner = zlib.decompress(gzip_bomb(), zlib.MAX_WBITS | 16)
    http_lab.routes[PATH] = (200, {"Content-Encoding": "gzip"}, inner)
    failure, took, peak = await failure_of(client, http_lab.port)
    assert failure.type == "unauthorized"
    assert failure.detail.startswith("The key authorization file from the server did not match")
    assert peak < MEMORY_BOUND_BYTES and took < 2.0


async def test_a_small_gzip_bomb_inflates_to_the_body_cap_only(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (200, {"Content-Encoding": "gzip"}, gzip(b"\0" * (16 << 20)))  # 16 MiB in ~16 KiB
    assert len(http_lab.routes[PATH][2]) < MAX_BODY_BYTES
    failure, _, peak = await failure_of(client, http_lab.port)
    assert failure.type == "unauthorized"
    assert peak < MEMORY_BOUND_BYTES


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip(KEY_AUTH.encode())),
        ("x-gzip", gzip(KEY_AUTH.encode())),
        ("deflate", zlib.compress(KEY_AUTH.encode())),
        ("deflate", zlib.compress(KEY_AUTH.encode())[2:-4]),  # raw deflate, as some servers send
        ("identity", KEY_AUTH.encode()),
        ("identity, gzip", gzip(KEY_AUTH.encode())),
    ],
)
async def test_a_server_that_compresses_anyway_still_validates(
    client: httpx.AsyncClient, http_lab: HttpLab, encoding: str, body: bytes
) -> None:
    http_lab.routes[PATH] = (200, {"Content-Encoding": encoding}, body)
    await check(client, http_lab.port)
    assert http_lab.headers[0]["accept-encoding"] == "identity"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "deflate, gzip"])
async def test_other_or_layered_codings_are_refused(client: httpx.AsyncClient, http_lab: HttpLab, encoding: str) -> None:
    http_lab.routes[PATH] = (200, {"Content-Encoding": encoding}, KEY_AUTH.encode())
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port)
    assert failure.value.type == "unauthorized"
    assert "is not accepted" in failure.value.detail


async def test_a_body_that_does_not_inflate_is_refused(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (200, {"Content-Encoding": "gzip"}, b"not gzip at all")
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port)
    assert failure.value.to_data() == {
        "type": "unauthorized",
        "detail": f"Invalid response from http://myhost.localhost:{http_lab.port}{PATH}: the gzip body could not "
        "be decoded",
    }


async def test_a_redirect_loop_ends_quickly(client: httpx.AsyncClient, hostile: HostileChallengeServer) -> None:
    hostile.modes[TOKEN] = "loop"
    failure, took, _ = await failure_of(client, hostile.port)
    assert failure.to_data() == {
        "type": "connection",
        "detail": f"Fetching http://myhost.localhost:{hostile.port}{PATH}: too many redirects "
        f"(more than {http01.MAX_REDIRECTS})",
    }
    assert hostile.requests[PATH] == http01.MAX_REDIRECTS + 1
    assert took < 2.0


async def test_a_redirect_to_a_forbidden_port_is_not_followed(
    client: httpx.AsyncClient, hostile: HostileChallengeServer
) -> None:
    hostile.modes[TOKEN] = "forbidden-port"
    failure, _, _ = await failure_of(client, hostile.port)
    assert failure.to_data() == {
        "type": "connection",
        "detail": f"Fetching http://myhost.localhost:{hostile.port}{PATH}: redirect to http port 22 is not followed "
        f"(only {hostile.port} for http, 443 for https)",
    }
    assert hostile.requests == {PATH: 1}


async def test_a_redirect_to_another_scheme_is_not_followed(
    client: httpx.AsyncClient, hostile: HostileChallengeServer
) -> None:
    hostile.modes[TOKEN] = "forbidden-scheme"
    failure, _, _ = await failure_of(client, hostile.port)
    assert failure.to_data() == {
        "type": "connection",
        "detail": f"Fetching http://myhost.localhost:{hostile.port}{PATH}: redirect to file URL is not followed",
    }


async def test_credentials_in_a_redirect_are_not_sent(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (302, {"Location": f"http://user:secret@myhost.localhost:{http_lab.port}/next"}, b"")
    http_lab.routes["/next"] = (200, {}, KEY_AUTH.encode())
    await check(client, http_lab.port)
    assert "authorization" not in http_lab.headers[1]
    assert http_lab.requests[1] == ("/next", f"myhost.localhost:{http_lab.port}")


async def test_a_1_mib_header_is_cut_at_the_head_limit(client: httpx.AsyncClient, hostile: HostileChallengeServer) -> None:
    hostile.modes[TOKEN] = "big-header"
    failure, took, peak = await failure_of(client, hostile.port)
    assert failure.to_data() == {
        "type": "connection",
        "detail": f"127.0.0.1: Fetching http://myhost.localhost:{hostile.port}{PATH}: Error reading the response "
        f"(response headers longer than {http01.MAX_HEAD_BYTES} bytes)",
    }
    assert peak < MEMORY_BOUND_BYTES and took < 2.0


async def test_too_many_header_fields_are_refused(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    headers = {f"X-Field-{n}": "v" for n in range(http01.MAX_HEADER_COUNT)}  # + Content-Length, Connection
    http_lab.routes[PATH] = (200, headers, KEY_AUTH.encode())
    with pytest.raises(ValidationFailure) as failure:
        await check(client, http_lab.port)
    assert failure.value.detail.endswith(
        f"Error reading the response (more than {http01.MAX_HEADER_COUNT} response header fields)"
    )


async def test_as_many_header_fields_as_allowed_are_fine(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    headers = {f"X-Field-{n}": "v" for n in range(http01.MAX_HEADER_COUNT - 2)}
    http_lab.routes[PATH] = (200, headers, KEY_AUTH.encode())
    await check(client, http_lab.port)


def challenge_to_check(port: int) -> ChallengeToCheck:
    return ChallengeToCheck("c1", "a1", "http-01", "processing", TOKEN, "dns", "myhost.localhost", False, "acct",
                            KEY_AUTH.split(".", 1)[1], None)


async def test_a_server_dribbling_bytes_meets_the_total_deadline(
    client: httpx.AsyncClient, hostile: HostileChallengeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One byte every 0.2 s: never quiet for the read timeout, never done either.
    monkeypatch.setattr("tests.support.hostile_http.DRIBBLE_INTERVAL_SECONDS", 0.2)
    hostile.modes[TOKEN] = "dribble"
    options = ValidationOptions(ValidationPorts(hostile.port), LAB_POLICY, timeout_seconds=1.5)
    validator = ChallengeValidator(None, client, NameResolver([]), options,  # type: ignore[arg-type]
                                   authz_lifetime=dt.timedelta(days=1))
    started = time.monotonic()
    error = await validator.validate(challenge_to_check(hostile.port))
    took = time.monotonic() - started
    assert error == {
        "type": "connection",
        "detail": "Validation of myhost.localhost (http-01) timed out after 1.5 s: the server answered too slowly "
        "or not at all",
    }
    assert 1.4 < took < 3.0
    assert http01.READ_TIMEOUT_SECONDS > 1.5  # it was the total deadline, not the read timeout


class DeliveredMsg:
    """A JetStream message as the handler sees it: acks, headers, and the delivery count."""

    def __init__(self, num_delivered: int) -> None:
        self.acks = 0
        self.headers: dict[str, str] = {}
        self.metadata = SimpleNamespace(num_delivered=num_delivered)

    async def ack(self) -> None:
        self.acks += 1


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def validator_for(db: Database, http_lab: HttpLab, client: httpx.AsyncClient,
                        max_attempts: int = 3) -> ChallengeValidator:
    options = ValidationOptions(ValidationPorts(http_lab.port), LAB_POLICY, max_attempts=max_attempts)
    return ChallengeValidator(db, client, NameResolver([]), options, authz_lifetime=dt.timedelta(days=1))


async def test_a_check_that_keeps_failing_is_abandoned_unchecked(
    db: Database, http_lab: HttpLab, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = await insert_pending_order(db, "myhost.localhost")
    http_lab.routes["/.well-known/acme-challenge/" + rows.token] = (200, {}, rows.key_authorization.encode())
    validator = await validator_for(db, http_lab, client, max_attempts=3)
    job = bus.ValidateJob(challenge_id=rows.challenge_id)
    checks = 0

    async def dies(_challenge: ChallengeToCheck) -> None:  # as a validator OOM-killed mid-check
        nonlocal checks
        checks += 1
        raise MemoryError

    monkeypatch.setattr(validator, "validate", dies)
    for delivery in (1, 2, 3):
        with pytest.raises(MemoryError):
            await validator.handle(job, DeliveredMsg(delivery))  # type: ignore[arg-type]
    assert checks == 3

    msg = DeliveredMsg(4)
    await validator.handle(job, msg)  # type: ignore[arg-type]

    after = await snapshot(db, rows)
    assert checks == 3 and msg.acks == 1
    assert http_lab.requests == []
    assert after["challenge"]["status"] == "invalid"
    assert after["challenge"]["error"] == {
        "type": "serverInternal",
        "detail": "validation was attempted 3 times and never completed (the validator failed or stopped each "
        "time); it is not tried again",
    }
    assert after["challenge"]["check_attempts"] == 3
    assert after["authz"]["status"] == "invalid"
    assert after["order"]["status"] == "invalid" and after["order"]["error"] == after["challenge"]["error"]


async def test_deliveries_that_never_reached_the_check_do_not_count(
    db: Database, http_lab: HttpLab, client: httpx.AsyncClient
) -> None:
    # Deliveries 1 to 9 failed before the check (the database away: the load raised).
    rows = await insert_pending_order(db, "myhost.localhost")
    http_lab.routes["/.well-known/acme-challenge/" + rows.token] = (200, {}, rows.key_authorization.encode())
    validator = await validator_for(db, http_lab, client, max_attempts=3)

    msg = DeliveredMsg(10)
    await validator.handle(bus.ValidateJob(challenge_id=rows.challenge_id), msg)  # type: ignore[arg-type]

    after = await snapshot(db, rows)
    assert msg.acks == 1
    assert after["challenge"]["status"] == "valid" and after["challenge"]["check_attempts"] == 1


async def test_a_first_delivery_writes_nothing_before_its_check(
    db: Database, http_lab: HttpLab, client: httpx.AsyncClient
) -> None:
    rows = await insert_pending_order(db, "myhost.localhost")
    http_lab.routes["/.well-known/acme-challenge/" + rows.token] = (200, {}, rows.key_authorization.encode())
    validator = await validator_for(db, http_lab, client)
    await validator.handle(bus.ValidateJob(challenge_id=rows.challenge_id), DeliveredMsg(1))  # type: ignore[arg-type]
    after = await snapshot(db, rows)
    assert after["challenge"]["status"] == "valid" and after["challenge"]["check_attempts"] == 0
