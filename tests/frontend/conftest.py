"""The frontend app in-process (httpx ASGI transport) on a fresh database and a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from acme_ra.config import Settings
from acme_ra.db.migrate import upgrade
from acme_ra_frontend.app import create_app
from tests.conformance.client import TestAcmeClient
from tests.support import database
from tests.support.nats import nats_server

EXTERNAL_URL = "https://ra.test"


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with nats_server(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database of the lane's kind (tests/support/database.py)."""
    with database.fresh_database(tmp_path_factory.mktemp("db")) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=database_url,
        nats_url=nats_url,
        external_url=EXTERNAL_URL,
        state_dir=tmp_path_factory.mktemp("state"),
        provisioners="acme,other",
        # The suite registers many accounts and orders from one address; tests/frontend/test_ratelimits.py
        # checks the limits with an app of its own.
        rate_new_accounts_per_ip_per_hour=0,
        rate_new_orders_per_account_per_hour=0,
        # No validator or signer runs here: answer at once (tests/frontend/test_answer_wait.py waits).
        answer_wait_seconds=0,
    )


@pytest.fixture(scope="session")
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=EXTERNAL_URL) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def client(http: httpx.AsyncClient) -> TestAcmeClient:
    acme = TestAcmeClient(http, f"{EXTERNAL_URL}/acme/acme/directory")
    await acme.load_directory()
    return acme


@pytest.fixture
async def account(client: TestAcmeClient) -> TestAcmeClient:
    reply = await client.register(contact=["mailto:admin@example.org"])
    assert reply.status == 201, reply.text
    return client
