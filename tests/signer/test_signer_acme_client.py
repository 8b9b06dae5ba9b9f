"""The ACME client's protocol plumbing against a scripted server (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from acme import jws
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from acme_ra_signer.upstream.acme_client import (
    AccountKey,
    AcmeClient,
    AcmeProblem,
    UpstreamResponse,
    link_urls,
    retry_after_seconds,
)
from acme_ra_signer.upstream.base import UpstreamUnavailable

BASE = "https://ca.test"
DIRECTORY: dict[str, Any] = {
    "newNonce": f"{BASE}/nonce",
    "newAccount": f"{BASE}/account",
    "newOrder": f"{BASE}/order",
    "revokeCert": f"{BASE}/revoke",
    "meta": {"externalAccountRequired": True},
}


def problem(status: int, type_: str, nonce: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/problem+json"}
    if nonce:
        headers["Replay-Nonce"] = nonce
    return httpx.Response(
        status, headers=headers, json={"type": f"urn:ietf:params:acme:error:{type_}", "detail": type_}
    )


def scripted(posts: list[Callable[[httpx.Request], httpx.Response]], log: list[httpx.Request]) -> httpx.MockTransport:
    counter = iter(range(1000))

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request)
        if request.url.path == "/directory":
            return httpx.Response(200, json=DIRECTORY)
        if request.url.path == "/nonce":
            return httpx.Response(200, headers={"Replay-Nonce": f"bm9uY2U{next(counter)}"})
        return posts.pop(0)(request)

    return httpx.MockTransport(handler)


def nonce_of(request: httpx.Request) -> str:
    protected = json.loads(request.content)["protected"]
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    return str(header["nonce"])


async def test_bad_nonce_is_retried_once_with_the_nonce_it_carried() -> None:
    log: list[httpx.Request] = []
    posts = [
        lambda r: problem(400, "badNonce", nonce="ZnJlc2g"),
        lambda r: httpx.Response(
            201, headers={"Location": f"{BASE}/acct/1", "Replay-Nonce": "bmV4dA"}, json={"status": "valid"}
        ),
    ]
    client = AcmeClient(f"{BASE}/directory", transport=scripted(posts, log))
    key = AccountKey.generate("ec256")
    response = await client.post(DIRECTORY["newAccount"], {"termsOfServiceAgreed": True}, key, kid=None)
    assert response.status_code == 201
    _first, second = [r for r in log if r.method == "POST"]
    assert nonce_of(second) == "ZnJlc2g"  # the nonce of the badNonce answer, no extra HEAD
    assert [r.method for r in log].count("HEAD") == 1
    await client.close()


async def test_a_second_bad_nonce_is_raised() -> None:
    log: list[httpx.Request] = []
    posts = [lambda r: problem(400, "badNonce", nonce="YQ"), lambda r: problem(400, "badNonce", nonce="Yg")]
    client = AcmeClient(f"{BASE}/directory", transport=scripted(posts, log))
    with pytest.raises(AcmeProblem) as raised:
        await client.post(DIRECTORY["newOrder"], {}, AccountKey.generate("ec256"), kid=f"{BASE}/acct/1")
    assert raised.value.code == "badNonce"
    await client.close()


async def test_server_errors_without_a_problem_and_network_failures_are_unavailable() -> None:
    log: list[httpx.Request] = []
    posts = [lambda r: httpx.Response(502, text="<html>bad gateway</html>")]
    client = AcmeClient(f"{BASE}/directory", transport=scripted(posts, log))
    with pytest.raises(UpstreamUnavailable, match="502 without a problem document"):
        await client.post(DIRECTORY["newOrder"], {}, AccountKey.generate("rsa2048"), kid=f"{BASE}/acct/1")
    await client.close()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = AcmeClient(f"{BASE}/directory", transport=httpx.MockTransport(refuse))
    with pytest.raises(UpstreamUnavailable, match="unreachable: ConnectError"):
        await client.directory()
    await client.close()


async def test_a_bare_404_is_a_problem_with_its_status() -> None:
    log: list[httpx.Request] = []
    client = AcmeClient(f"{BASE}/directory", transport=scripted([lambda r: httpx.Response(404)], log))
    with pytest.raises(AcmeProblem) as raised:
        await client.post(f"{BASE}/my-order/1", None, AccountKey.generate("ec256"), kid=f"{BASE}/acct/1")
    assert raised.value.status == 404 and raised.value.code == "about:blank"
    assert log[-1].content and json.loads(log[-1].content)["payload"] == ""  # POST-as-GET
    await client.close()


def answer(*headers: tuple[str, str], url: str = f"{BASE}/x") -> UpstreamResponse:
    return UpstreamResponse(url, 200, [(name.encode(), value.encode()) for name, value in headers], b"")


def test_retry_after_as_seconds_or_date() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert retry_after_seconds(answer(("Retry-After", "7"))) == 7.0
    assert retry_after_seconds(answer(("Retry-After", "Thu, 01 Jan 2026 12:00:30 GMT")), now) == 30.0
    assert retry_after_seconds(answer(("Retry-After", "soon"))) is None
    assert retry_after_seconds(answer()) is None


def test_every_alternate_link_is_found() -> None:
    response = answer(
        ("Link", f'<{BASE}/dir>;rel="index"'),
        ("link", '</cert/1/alt/1>;rel="alternate", <https://ca.test/cert/1/alt/2>; rel=alternate'),
        url=f"{BASE}/cert/1",
    )
    assert link_urls(response, "alternate") == [f"{BASE}/cert/1/alt/1", f"{BASE}/cert/1/alt/2"]
    assert link_urls(response, "index") == [f"{BASE}/dir"]


def test_response_headers_read_as_httpx_reads_them() -> None:
    raw = [("Replay-Nonce", "abc"), ("X-Two", "a"), ("x-two", "b"), ("Location", "https://ca.test/o/1")]
    ours = answer(*raw).headers
    theirs = httpx.Response(200, headers=raw).headers
    for name in ("replay-nonce", "X-TWO", "location", "absent"):
        assert ours.get(name) == theirs.get(name), name
        assert ours.get_list(name) == theirs.get_list(name), name
    assert ours["Location"] == theirs["Location"]
    with pytest.raises(KeyError):
        ours["absent"]


def test_account_keys_round_trip_through_pem() -> None:
    for kind in ("ec256", "rsa2048"):
        key = AccountKey.generate(kind)
        again = AccountKey.from_pem(key.to_pem())
        assert again.thumbprint == key.thumbprint and again.alg == key.alg
    with pytest.raises(ValueError, match="unknown account key type"):
        AccountKey.generate("dsa")


@pytest.mark.parametrize("curve_or_size", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1(), 2048])
def test_signed_requests_verify_with_josepy(curve_or_size: ec.EllipticCurve | int) -> None:
    """The JWS signed straight with cryptography is one that josepy (certbot's acme) verifies,
    with the header RFC 8555 §6.2 asks for: kid or jwk, never both; the nonce as the server sent it."""
    def new_key() -> AccountKey:
        if isinstance(curve_or_size, int):
            return AccountKey.from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=curve_or_size))
        return AccountKey.from_private_key(ec.generate_private_key(curve_or_size))

    key, stranger = new_key(), new_key()
    for kid in (f"{BASE}/acct/1", None):
        body = key.signer.sign(b'{"identifiers":[]}', "bm9uY2UtMQ", f"{BASE}/order", kid)
        parsed = jws.JWS.json_loads(body)
        assert parsed.verify(key.public_jwk)
        assert not parsed.verify(stranger.public_jwk)
        header = parsed.signature.combined
        assert parsed.payload == b'{"identifiers":[]}'
        assert isinstance(header, jws.Header)  # acme's Header: josepy's with url, nonce and kid
        assert (header.alg, header.url, header.kid) == (key.alg, f"{BASE}/order", kid)
        assert header.jwk == (key.public_jwk if kid is None else None)
        protected = json.loads(body)["protected"]
        assert json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))["nonce"] == "bm9uY2UtMQ"
    post_as_get = json.loads(key.signer.sign(b"", "bm9uY2UtMQ", f"{BASE}/order/1", f"{BASE}/acct/1"))
    assert post_as_get["payload"] == ""


async def test_a_proxy_carries_the_requests() -> None:
    """With ACME_RA_UPSTREAM_PROXY the client speaks through httpx's transport and the proxy."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readline())
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AcmeClient(f"{BASE}/directory", proxy=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(UpstreamUnavailable, match="unreachable"):
            await client.directory()
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    assert seen == [b"CONNECT ca.test:443 HTTP/1.1\r\n"]
