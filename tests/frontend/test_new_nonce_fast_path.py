"""HEAD/GET newNonce are answered before routing (headers.AcmeHeaders): the same answer as the
route gave, RFC 8555 §7.2, for every provisioner; anything else still goes through the router."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.conformance.client import TestAcmeClient

CORS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", b"Link, Replay-Nonce, Location, Retry-After"),
]


def counted(method: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "acme_ra_http_requests_total", {"route": "/acme/{provisioner}/new-nonce", "method": method, "status": status}
    )
    return value or 0.0


def timed(method: str) -> float:
    value = REGISTRY.get_sample_value(
        "acme_ra_http_request_duration_seconds_count", {"route": "/acme/{provisioner}/new-nonce", "method": method}
    )
    return value or 0.0


async def test_head_and_get_answers_are_the_routes(client: TestAcmeClient) -> None:
    heads, gets = counted("HEAD", "200"), counted("GET", "204")
    head = await client.http.head(client.directory["newNonce"])
    get = await client.http.get(client.directory["newNonce"])
    assert head.status_code == 200 and get.status_code == 204
    assert head.content == b"" and get.content == b""
    link = (b"link", b'<https://ra.test/acme/acme/directory>;rel="index"')
    nonce = (b"replay-nonce", head.headers["replay-nonce"].encode())
    assert head.headers.raw == [(b"cache-control", b"no-store"), (b"content-length", b"0"), nonce, link, *CORS]
    nonce = (b"replay-nonce", get.headers["replay-nonce"].encode())
    assert get.headers.raw == [(b"cache-control", b"no-store"), nonce, link, *CORS]
    assert counted("HEAD", "200") == heads + 1 and counted("GET", "204") == gets + 1
    assert timed("HEAD") == 0 and timed("GET") == 0  # answered before routing: counted, not timed


async def test_each_provisioner_links_its_own_directory(client: TestAcmeClient) -> None:
    reply = await client.http.head("https://ra.test/acme/other/new-nonce")
    assert reply.status_code == 200
    assert reply.headers["link"] == '<https://ra.test/acme/other/directory>;rel="index"'


async def test_the_nonce_is_accepted_once(account: TestAcmeClient) -> None:
    url = account.kid
    assert url
    nonce = (await account.http.head(account.directory["newNonce"])).headers["replay-nonce"]
    first = await account.post_raw(url, account.sign(url, "", nonce))
    second = await account.post_raw(url, account.sign(url, "", nonce))
    assert first.status == 200
    assert second.problem_type == "badNonce"


async def test_other_requests_still_go_through_the_router(client: TestAcmeClient) -> None:
    unknown = await client.http.head("https://ra.test/acme/nope/new-nonce")
    assert unknown.status_code == 404 and unknown.headers["replay-nonce"]
    put = await client.http.put(client.directory["newNonce"])
    assert put.status_code == 405 and put.headers["content-type"] == "application/problem+json"
    slash = await client.http.get(client.directory["newNonce"] + "/")
    assert slash.status_code == 307
