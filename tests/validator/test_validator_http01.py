from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography import x509

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
