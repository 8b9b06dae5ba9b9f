"""No database connection is held while a request waits on the bus (issue 18, item 6).

finalize asks a validator to check CAA again (up to bus.CAA_RPC_TIMEOUT_SECONDS) for a stale
validation: it gives the request's connection back for the wait and takes a fresh one after, so
more waiting finalizes than the pool has connections leave the other requests their answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import update

from acme_ra import bus
from acme_ra.config import Settings
from acme_ra.db.models import Challenge
from acme_ra_frontend.app import create_app
from acme_ra_frontend.caa_recheck import CAA_RECHECK_AFTER
from tests.conformance.client import TestAcmeClient, b64, make_csr
from tests.frontend.conftest import EXTERNAL_URL
from tests.frontend.test_checklist import ready_order

# A pool of one connection (and one of overflow): a few waiting finalizes would empty it.
POOL_SIZE = 1
FINALIZES = 6  # more than the pool's connections (POOL_SIZE + its overflow)


@pytest.fixture
async def small_pool_http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"db_pool_size": POOL_SIZE, "caa_identities": "ca.example"}))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=EXTERNAL_URL) as client):
        client.app = app  # type: ignore[attr-defined]
        yield client


def connections_in_use(http: httpx.AsyncClient) -> int:
    """Connections checked out of the pool for a request (not those kept idle between uses)."""
    db = http.app.state.ra.db  # type: ignore[attr-defined]
    return int(db.engine.pool.checkedout()) - len(db._idle)


async def stale_ready_order(account: TestAcmeClient, http: httpx.AsyncClient, name: str) -> dict[str, object]:
    order = await ready_order(account, http, [name])
    authz_id = order["authorizations"][0].rsplit("/", 1)[1]  # type: ignore[index]
    async with http.app.state.ra.db.transaction() as session:  # type: ignore[attr-defined]
        await session.execute(update(Challenge).where(Challenge.authz_id == authz_id, Challenge.status == "valid")
                              .values(validated=dt.datetime.now(dt.UTC) - CAA_RECHECK_AFTER * 2))
    return order


async def test_no_connection_is_held_while_finalize_waits_for_caa(small_pool_http: httpx.AsyncClient) -> None:
    http = small_pool_http
    state = http.app.state.ra  # type: ignore[attr-defined]
    account = TestAcmeClient(http, f"{EXTERNAL_URL}/acme/acme/directory")
    await account.load_directory()
    assert (await account.register()).status == 201
    orders = [await stale_ready_order(account, http, f"pool{n}.example.org") for n in range(FINALIZES)]

    asked = asyncio.Event()
    release = asyncio.Event()
    waiting: list[object] = []

    async def slow_validator(message: object) -> None:  # answers only when the test says so
        waiting.append(message)
        if len(waiting) == FINALIZES:
            asked.set()
        await release.wait()
        await message.respond(bus.CaaRecheckReply(outcome="permitted").model_dump_json().encode())  # type: ignore[attr-defined]

    answering: set[asyncio.Task[None]] = set()

    async def on_request(message: object) -> None:  # nats.py runs one callback at a time: each wait its own task
        task = asyncio.create_task(slow_validator(message))
        answering.add(task)
        task.add_done_callback(answering.discard)

    subscription = await state.nc.subscribe(bus.SUBJECT_CAA_RPC, cb=on_request)
    try:
        async def finalize(order: dict[str, object]) -> int:
            csr, _ = make_csr([order["identifiers"][0]["value"]])  # type: ignore[index]
            return (await account.post(str(order["finalize"]), {"csr": b64(csr)})).status

        finalizes = [asyncio.create_task(finalize(order)) for order in orders]
        await asyncio.wait_for(asked.wait(), 20)
        # Every finalize is waiting on the bus, and none holds a connection.
        assert connections_in_use(http) == 0
        # Ordinary requests are answered at once meanwhile (the pool would time them out otherwise).
        started = time.monotonic()
        for order in orders[:3]:
            assert (await account.post(str(order["url"]))).body["status"] == "ready"
        reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "other.example.org"}]})
        assert reply.status == 201, reply.text
        assert time.monotonic() - started < 5
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*finalizes), 30) == [200] * FINALIZES
    finally:
        release.set()
        await subscription.unsubscribe()
    for order in orders:  # a fresh connection after the wait: each order claimed once
        assert (await account.post(str(order["url"]))).body["status"] == "processing"
    assert connections_in_use(http) == 0


async def test_a_finalize_refused_during_the_wait_gives_its_connection_back(
        small_pool_http: httpx.AsyncClient) -> None:
    """No validator answers: 503 with Retry-After, and no connection is left checked out."""
    http = small_pool_http
    account = TestAcmeClient(http, f"{EXTERNAL_URL}/acme/acme/directory")
    await account.load_directory()
    assert (await account.register()).status == 201
    order = await stale_ready_order(account, http, "gone.example.org")
    csr, _ = make_csr(["gone.example.org"])
    reply = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    assert reply.status == 503 and reply.problem_type == "serverInternal" and reply.headers["retry-after"]
    assert connections_in_use(http) == 0
    assert (await account.post(str(order["url"]))).body["status"] == "ready"
