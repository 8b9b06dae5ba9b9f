"""Caps on what one client can make the RA store (issue 18, item 8; docs/security.md "Caps and
connection use"): pending authorizations per account, identifiers per order, new accounts per
IPv6 network."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from acme_ra.config import Settings
from acme_ra.db.models import Authorization
from acme_ra_frontend.app import create_app
from acme_ra_frontend.ratelimits import client_network
from tests.conformance.client import TestAcmeClient
from tests.frontend.conftest import EXTERNAL_URL

PENDING_CAP = 3
IDENTIFIERS_CAP = 4
ACCOUNTS_PER_NETWORK = 2


@pytest.fixture(scope="module")
async def capped_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings.model_copy(update={
        "limit_pending_authz_per_account": PENDING_CAP, "limit_identifiers_per_order": IDENTIFIERS_CAP,
        "rate_new_accounts_per_ip_per_hour": ACCOUNTS_PER_NETWORK,
        # httpx's ASGI transport connects from 127.0.0.1: a trusted proxy naming the client
        "trusted_proxies": "127.0.0.1/32",
    }))
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def client_from(app: FastAPI, address: str) -> AsyncIterator[TestAcmeClient]:
    """An ACME client whose requests reach the frontend from ``address`` (X-Forwarded-For)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=EXTERNAL_URL,
                                 headers={"X-Forwarded-For": address}) as http:
        acme = TestAcmeClient(http, f"{EXTERNAL_URL}/acme/acme/directory")
        await acme.load_directory()
        yield acme


def names(*values: str) -> dict[str, object]:
    return {"identifiers": [{"type": "dns", "value": v} for v in values]}


async def test_pending_authorizations_per_account(capped_app: FastAPI) -> None:
    async with client_from(capped_app, "192.0.2.10") as account:
        assert (await account.register()).status == 201
        first = await account.post(account.directory["newOrder"], names("p1.example.org", "p2.example.org"))
        assert first.status == 201, first.text
        # 2 pending + 2 new > 3: refused, nothing stored
        refused = await account.post(account.directory["newOrder"], names("p3.example.org", "p4.example.org"))
        assert refused.status == 429 and refused.problem_type == "rateLimited", refused.text
        assert "pending authorizations" in refused.body["detail"]
        assert 0 < int(refused.headers["retry-after"]) <= 7 * 24 * 3600
        third = await account.post(account.directory["newOrder"], names("p3.example.org"))
        assert third.status == 201, third.text  # 3 of 3
        again = await account.post(account.directory["newOrder"], names("p5.example.org"))
        assert again.status == 429 and again.problem_type == "rateLimited"
        # A pending authorization is not reused: the same name again needs a new one
        same = await account.post(account.directory["newOrder"], names("p1.example.org"))
        assert same.status == 429 and same.problem_type == "rateLimited"
        # Deactivated: no longer pending, room again
        deactivated = await account.post(first.body["authorizations"][0], {"status": "deactivated"})
        assert deactivated.status == 200 and deactivated.body["status"] == "deactivated", deactivated.text
        assert (await account.post(account.directory["newOrder"], names("p5.example.org"))).status == 201
        assert (await account.post(account.directory["newOrder"], names("p6.example.org"))).status == 429
        # Expired (whether or not a read has marked them so): not counted
        account_id = str(account.kid).rsplit("/", 1)[1]
        async with capped_app.state.ra.db.transaction() as session:
            await session.execute(update(Authorization).where(Authorization.account_id == account_id)
                                  .values(expires=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
        reply = await account.post(account.directory["newOrder"], names("p6.example.org", "p7.example.org",
                                                                          "p8.example.org"))
        assert reply.status == 201, reply.text
    # Another account has its own cap
    async with client_from(capped_app, "192.0.2.11") as other:
        assert (await other.register()).status == 201
        assert (await other.post(other.directory["newOrder"], names("q1.example.org", "q2.example.org"))).status == 201


async def test_identifiers_per_order(capped_app: FastAPI) -> None:
    async with client_from(capped_app, "192.0.2.12") as account:
        assert (await account.register()).status == 201
        many = [f"n{i}.example.org" for i in range(IDENTIFIERS_CAP + 1)]
        refused = await account.post(account.directory["newOrder"], names(*many))
        assert refused.status == 400 and refused.problem_type == "malformed", refused.text
        assert f"at most {IDENTIFIERS_CAP} identifiers" in refused.body["detail"]


async def test_default_cap_of_100_identifiers(account: TestAcmeClient) -> None:
    refused = await account.post(account.directory["newOrder"], names(*[f"d{i}.example.org" for i in range(101)]))
    assert refused.status == 400 and refused.problem_type == "malformed", refused.text
    assert "at most 100 identifiers" in refused.body["detail"]


async def test_new_accounts_per_ipv6_64(capped_app: FastAPI) -> None:
    replies = []
    for address in ("2001:db8:a:b::1", "2001:db8:a:b::2", "2001:db8:a:b:ffff:ffff:ffff:ffff"):
        async with client_from(capped_app, address) as newcomer:
            replies.append(await newcomer.register())
    assert [r.status for r in replies] == [201, 201, 429]
    assert replies[2].problem_type == "rateLimited" and int(replies[2].headers["retry-after"]) > 0
    async with client_from(capped_app, "2001:db8:a:c::1") as neighbour:  # the next /64: counted apart
        assert (await neighbour.register()).status == 201


async def test_new_accounts_per_ipv4_address(capped_app: FastAPI) -> None:
    """IPv4 stays per address; an IPv4-mapped IPv6 address counts as its IPv4 address."""
    statuses = []
    for address in ("198.51.100.7", "::ffff:198.51.100.7", "198.51.100.7"):
        async with client_from(capped_app, address) as newcomer:
            statuses.append((await newcomer.register()).status)
    assert statuses == [201, 201, 429]
    async with client_from(capped_app, "198.51.100.8") as neighbour:
        assert (await neighbour.register()).status == 201


def test_client_network() -> None:
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:2:3:4:5:6", ipv6_prefix=48) == "2001:db8:1::/48"
    assert client_network("2001:db8::1", ipv6_prefix=128) == "2001:db8::1"
    assert client_network("192.0.2.9") == "192.0.2.9"
    assert client_network("192.0.2.9", ipv4_prefix=24) == "192.0.2.0/24"
    assert client_network("::ffff:192.0.2.9") == "192.0.2.9"
    assert client_network("unknown") == "unknown"
