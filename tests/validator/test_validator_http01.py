from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.http01 import MAX_BODY_BYTES, check_http01, new_http_client
from acme_ra_validator.resolver import NameResolver

from .conftest import DnsLab, HttpLab, unused_port

TOKEN = "tok-123"
KEY_AUTH = "tok-123.thumbprint-abc"
PATH = "/.well-known/acme-challenge/" + TOKEN


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client() as http:
        yield http


async def check(client: httpx.AsyncClient, port: int, host: str = "myhost.localhost",
                resolver: NameResolver | None = None) -> None:
    await check_http01(client, resolver or NameResolver([]), host, port, TOKEN, KEY_AUTH)


async def test_success_with_trailing_whitespace(client: httpx.AsyncClient, http_lab: HttpLab) -> None:
    http_lab.routes[PATH] = (200, {}, (KEY_AUTH + "\r\n").encode())
    await check(client, http_lab.port)
    assert http_lab.requests == [(PATH, f"myhost.localhost:{http_lab.port}")]


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
    "location", ["https://myhost.localhost/x", "http://myhost.localhost:1/x", "http://127.0.0.1/x"]
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
