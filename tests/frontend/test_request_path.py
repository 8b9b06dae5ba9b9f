"""The request path's shortcuts stay safe with several frontends on one database: the signing
account is read on every request (a cached parsed key never outlives a rollover or a
deactivation), and a nonce redeemed in one request's transaction is refused to every other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from acme_ra.config import Settings
from acme_ra_frontend.app import create_app
from tests.conformance.client import TestAcmeClient, new_key
from tests.frontend.conftest import EXTERNAL_URL
from tests.frontend.test_checklist import inner_jws


@pytest.fixture
async def second_frontend(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Another frontend on the same database, as behind a load balancer."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=EXTERNAL_URL) as client:
            yield client


async def twin(account: TestAcmeClient, http: httpx.AsyncClient) -> TestAcmeClient:
    """The same account, talking to the other frontend."""
    other = TestAcmeClient(http, account.directory_url, account.key)
    await other.load_directory()
    other.kid = account.kid
    return other


async def test_deactivation_is_refused_at_once_by_another_frontend(
    account: TestAcmeClient, second_frontend: httpx.AsyncClient
) -> None:
    assert account.kid
    other = await twin(account, second_frontend)
    assert (await other.post(account.kid)).status == 200  # its key is now parsed and cached there
    assert (await account.post(account.kid, {"status": "deactivated"})).status == 200
    refused = await other.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "d.example.org"}]})
    assert refused.status == 401 and refused.problem_type == "unauthorized"


async def test_a_rolled_over_key_is_refused_by_another_frontend(
    account: TestAcmeClient, second_frontend: httpx.AsyncClient
) -> None:
    assert account.kid
    other = await twin(account, second_frontend)
    assert (await other.post(account.kid)).status == 200
    url = account.directory["keyChange"]
    new = new_key("ec256")  # same algorithm: only the signature tells the keys apart
    old = account.key.public_key().to_partial_json()
    assert (await account.post(url, inner_jws(new, url, {"account": account.kid, "oldKey": old}))).status == 200
    stale = await other.post(account.kid)
    assert stale.status == 400 and stale.problem_type == "malformed"  # the old key's signature fails
    other.key = new
    assert (await other.post(account.kid)).status == 200


async def test_one_nonce_in_two_concurrent_requests_on_two_frontends(
    account: TestAcmeClient, second_frontend: httpx.AsyncClient
) -> None:
    assert account.kid
    other = await twin(account, second_frontend)
    nonce = await account.nonce()
    body = account.sign(account.kid, "", nonce)
    replies = await asyncio.gather(account.post_raw(account.kid, body), other.post_raw(account.kid, body))
    assert sorted(r.status for r in replies) == [200, 400]
    assert [r.problem_type for r in replies if r.status == 400] == ["badNonce"]
