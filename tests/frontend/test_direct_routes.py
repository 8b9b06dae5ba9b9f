"""ACME POST routes answered by the ACME middleware itself (routing.match_direct), not the router."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conformance.client import TestAcmeClient
from tests.frontend.test_checklist import problem


@pytest.fixture
def router_calls(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths that reached FastAPI's router."""
    router = http.app.router  # type: ignore[attr-defined]
    calls: list[str] = []
    original = type(router).__call__

    async def counted(self: object, scope: dict[str, Any], receive: object, send: object) -> None:
        calls.append(f"{scope.get('method')} {scope['path']}")
        await original(self, scope, receive, send)

    monkeypatch.setattr(type(router), "__call__", counted)
    return calls


async def test_acme_posts_skip_the_router_and_the_rest_takes_it(
    account: TestAcmeClient, http: httpx.AsyncClient, router_calls: list[str]
) -> None:
    order = await account.post(account.directory["newOrder"],
                               {"identifiers": [{"type": "dns", "value": "d.example.org"}]})
    assert order.status == 201 and order.location
    assert (await account.post(order.location)).status == 200
    assert (await account.post(order.body["authorizations"][0])).status == 200
    assert router_calls == []

    assert (await http.get(account.directory_url)).status_code == 200  # GET: the router
    jose = {"content-type": "application/jose+json"}
    directory_post = await http.post(account.directory_url, content=b"{}", headers=jose)
    unknown = await http.post(account.directory_url.replace("/directory", "/no-such-thing"), content=b"{}",
                              headers={"content-type": "application/jose+json"})
    assert problem(unknown) == "malformed" and unknown.status_code == 404
    assert directory_post.status_code in (400, 405)
    assert len(router_calls) == 3
    # Answered directly, the problem documents and ACME headers are those the router's path gives.
    refused = await http.post(account.directory["newOrder"], content=b"not a jws",
                              headers={"content-type": "application/jose+json"})
    assert problem(refused) == "malformed" and refused.headers["replay-nonce"]
    assert 'rel="index"' in refused.headers["link"]
    assert len(router_calls) == 3
