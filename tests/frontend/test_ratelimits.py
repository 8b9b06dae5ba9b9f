"""Rate limits: counted in the database (so every replica sees them), 429 rateLimited + Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select

from acme_ra.config import Settings
from acme_ra.db.models import Order
from acme_ra_frontend.app import create_app
from tests.conformance.client import TestAcmeClient
from tests.frontend.conftest import EXTERNAL_URL


@pytest.fixture(scope="module")
async def limited_http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    tight = settings.model_copy(update={
        "rate_new_accounts_per_ip_per_hour": 1000, "rate_new_orders_per_account_per_hour": 2,
        "rate_failed_validations_per_name_per_hour": 1,
    })
    app = create_app(tight)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=EXTERNAL_URL) as client):
        client.app = app  # type: ignore[attr-defined]
        yield client


async def test_orders_per_account(limited_http: httpx.AsyncClient) -> None:
    client = TestAcmeClient(limited_http, f"{EXTERNAL_URL}/acme/acme/directory")
    await client.load_directory()
    assert (await client.register()).status == 201
    order = {"identifiers": [{"type": "dns", "value": "rl.example.org"}]}
    assert (await client.post(client.directory["newOrder"], order)).status == 201
    assert (await client.post(client.directory["newOrder"], order)).status == 201
    third = await client.post(client.directory["newOrder"], order)
    assert third.status == 429 and third.problem_type == "rateLimited"
    assert 0 < int(third.headers["retry-after"]) <= 3600
    # The refused order left nothing behind (on PostgreSQL the counter and the insert are one statement).
    assert await orders_of(limited_http, str(client.kid)) == 2
    # Another account is not affected.
    other = TestAcmeClient(limited_http, client.directory_url)
    await other.load_directory()
    await other.register()
    assert (await other.post(other.directory["newOrder"], order)).status == 201


async def orders_of(http: httpx.AsyncClient, account_url: str) -> int:
    async with http.app.state.ra.db.engine.connect() as conn:  # type: ignore[attr-defined]
        return int((await conn.execute(select(func.count()).select_from(Order).where(
            Order.account_id == account_url.rsplit("/", 1)[-1]))).scalar_one())


async def test_public_suffix_is_rejected(limited_http: httpx.AsyncClient) -> None:
    client = TestAcmeClient(limited_http, f"{EXTERNAL_URL}/acme/acme/directory")
    await client.load_directory()
    await client.register()
    reply = await client.post(client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "co.uk"}]})
    assert reply.problem_type == "rejectedIdentifier"


async def test_a_refused_new_order_does_not_count(limited_http: httpx.AsyncClient) -> None:
    """newOrder runs without a transaction: its counters are spent last, just before the insert,
    so an order refused for anything else (policy, a malformed replaces, an unknown profile)
    leaves them as they were."""
    client = TestAcmeClient(limited_http, f"{EXTERNAL_URL}/acme/acme/directory")
    await client.load_directory()
    assert (await client.register()).status == 201
    refused = [
        {"identifiers": [{"type": "dns", "value": "co.uk"}]},
        {"identifiers": [{"type": "dns", "value": "rr.example.org"}], "replaces": "no.such-certificate"},
        {"identifiers": [{"type": "dns", "value": "rr.example.org"}], "profile": "no-such-profile"},
    ]
    for payload in refused * 2:
        reply = await client.post(client.directory["newOrder"], payload)
        assert reply.status in (400, 403, 404), reply.text
    order = {"identifiers": [{"type": "dns", "value": "rr.example.org"}]}
    assert (await client.post(client.directory["newOrder"], order)).status == 201
    assert (await client.post(client.directory["newOrder"], order)).status == 201
    assert (await client.post(client.directory["newOrder"], order)).problem_type == "rateLimited"
