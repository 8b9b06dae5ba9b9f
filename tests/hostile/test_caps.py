"""Caps and connection use (issue 18, items 6 and 8) against the real processes.

- An account cannot grow the authorizations table without bound (pending authorizations per
  account), an order cannot name more than a cap of identifiers, and one IPv6 /64 cannot register
  accounts without bound: each refused with its exact status and problem type, at once.
- Finalizes that wait on a validator which does not answer CAA re-checks (SIGSTOP), more of them
  than the frontend's database pool holds, do not starve the other requests: no connection is held
  during the wait.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from acme_ra import bus
from acme_ra.db.models import Authorization, Challenge, Order
from tests.conformance.client import TestAcmeClient, make_csr
from tests.hostile.conftest import Timer, assert_still_up
from tests.support.lab import Lab


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@asynccontextmanager
async def acme_client(lab: Lab, forwarded_for: str | None = None) -> AsyncIterator[TestAcmeClient]:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    context = ssl.create_default_context(cafile=str(lab.ca_bundle))
    async with httpx.AsyncClient(verify=context, timeout=60, headers=headers) as http:
        client = TestAcmeClient(http, lab.directory_url)
        await client.load_directory()
        yield client


def names(*values: str) -> dict[str, object]:
    return {"identifiers": [{"type": "dns", "value": v} for v in values]}


async def timed_post(client: TestAcmeClient, url: str, payload: Any = "") -> tuple[Any, Timer]:
    with Timer() as timer:
        reply = await client.post(url, payload)
    return reply, timer


async def test_caps_refuse_with_their_problem_types(own_lab: Callable[..., AbstractContextManager[Lab]]) -> None:
    with own_lab(ACME_RA_LIMIT_PENDING_AUTHZ_PER_ACCOUNT="3", ACME_RA_LIMIT_IDENTIFIERS_PER_ORDER="4",
                 ACME_RA_RATE_NEW_ACCOUNTS_PER_IP_PER_HOUR="2", ACME_RA_TRUSTED_PROXIES="127.0.0.1/32") as lab:
        async with acme_client(lab) as account:
            assert (await account.register()).status == 201
            new_order = account.directory["newOrder"]
            # identifiers per order: malformed, before anything is stored
            reply, timer = await timed_post(account, new_order, names(*[f"i{n}.acme-ra.test" for n in range(5)]))
            assert reply.status == 400 and reply.problem_type == "malformed", reply.text
            timer.assert_quick()
            # as many identifiers as a 50 kB body holds: the same answer, as quickly
            reply, timer = await timed_post(account, new_order, {"identifiers": [{"type": "dns", "value": "x.y"}] * 1000})
            assert reply.status == 400 and reply.problem_type == "malformed", reply.text
            timer.assert_quick()
            # pending authorizations per account: 3 fit, the 4th is refused
            for n in range(3):
                assert (await account.post(new_order, names(f"p{n}.acme-ra.test"))).status == 201
            reply, timer = await timed_post(account, new_order, names("p3.acme-ra.test"))
            assert reply.status == 429 and reply.problem_type == "rateLimited", reply.text
            assert int(reply.headers["retry-after"]) > 0
            timer.assert_quick()
            # a flood of newOrders stays refused, quickly, and stores nothing
            with Timer() as flood:
                replies = await asyncio.gather(*(account.post(new_order, names(f"f{n}.acme-ra.test")) for n in range(20)))
            assert {(r.status, r.problem_type) for r in replies} == {(429, "rateLimited")}
            flood.assert_quick()
        # new accounts per IPv6 /64 (the client named by a trusted proxy)
        statuses = []
        for address in ("2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:6:1:2:3:4"):
            async with acme_client(lab, address) as newcomer:
                reply, timer = await timed_post(newcomer, newcomer.directory["newAccount"],
                                                {"termsOfServiceAgreed": True})
                timer.assert_quick()
                statuses.append((reply.status, reply.problem_type))
        assert statuses == [(201, None), (201, None), (429, "rateLimited")]
        async with acme_client(lab, "2001:db8:5:7::1") as neighbour:
            assert (await neighbour.register()).status == 201
        assert_still_up(lab)


async def _stale_ready_order(client: TestAcmeClient, database_url: str, name: str) -> dict[str, Any]:
    """An order made ready as the validator would leave it, its validation 8 h old (CAA must be
    checked again at finalization)."""
    reply = await client.post(client.directory["newOrder"], names(name))
    assert reply.status == 201, reply.text
    order_id = str(reply.location).rsplit("/", 1)[1]
    authz_ids = [url.rsplit("/", 1)[1] for url in reply.body["authorizations"]]
    now = dt.datetime.now(dt.UTC)
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(update(Authorization).where(Authorization.id.in_(authz_ids))
                               .values(status="valid", expires=now + dt.timedelta(days=30)))
            await conn.execute(update(Challenge).where(Challenge.authz_id.in_(authz_ids), Challenge.type == "http-01")
                               .values(status="valid", validated=now - dt.timedelta(hours=8)))
            await conn.execute(update(Order).where(Order.id == order_id).values(status="ready"))
    finally:
        await engine.dispose()
    return {"url": reply.location, **reply.body}


POOL_SIZE = 2  # ACME_RA_DB_POOL_SIZE: at most 2 × 2 connections (pool and overflow)
WAITING_FINALIZES = 8


async def test_finalizes_waiting_on_a_silent_validator_leave_the_pool_free(
        own_lab: Callable[..., AbstractContextManager[Lab]], fresh_database_url: str) -> None:
    with own_lab(ACME_RA_DB_POOL_SIZE=str(POOL_SIZE), ACME_RA_CAA_IDENTITIES="ca.acme-ra.test",
                 ACME_RA_FRONTEND_WORKERS="1") as lab:
        validator = lab.topology.services["validator"].process
        async with acme_client(lab) as account:
            assert (await account.register()).status == 201
            orders = [await _stale_ready_order(account, fresh_database_url, f"w{n}.acme-ra.test")
                      for n in range(WAITING_FINALIZES)]
            os.kill(validator.pid, signal.SIGSTOP)  # subscribed to the CAA re-checks, answers none
            try:
                async def finalize(order: dict[str, Any]) -> Any:
                    csr, _ = make_csr([order["identifiers"][0]["value"]])
                    return await account.post(order["finalize"], {"csr": b64(csr)})

                started = time.monotonic()
                finalizes = [asyncio.create_task(finalize(order)) for order in orders]
                await asyncio.sleep(2)  # every finalize is now waiting for its CAA answer
                assert not any(task.done() for task in finalizes)
                # Ordinary requests meanwhile: answered quickly, the pool is not exhausted
                async with acme_client(lab) as other:
                    with Timer() as timer:
                        assert (await other.register()).status == 201
                        reply = await other.post(other.directory["newOrder"], names("o.acme-ra.test"))
                        assert reply.status == 201, reply.text
                        assert (await other.post(str(reply.location))).status == 200
                        polled = await account.post(orders[0]["url"])
                        assert polled.status == 200 and polled.body["status"] == "ready"
                    timer.assert_quick()
                replies = await asyncio.gather(*finalizes)
                waited = time.monotonic() - started
            finally:
                os.kill(validator.pid, signal.SIGCONT)
            # No validator answered: each finalize is refused 503 + Retry-After after the RPC timeout
            assert [(r.status, r.problem_type) for r in replies] == [(503, "serverInternal")] * WAITING_FINALIZES
            assert all(r.headers.get("retry-after") for r in replies)
            assert waited < bus.CAA_RPC_TIMEOUT_SECONDS + 10
            # and the orders are still ready, for a finalize once CAA can be checked
            for order in orders:
                assert (await account.post(order["url"])).body["status"] == "ready"
        frontend_log = (lab.topology.log_dir / "frontend.log").read_text(errors="replace")
        assert "QueuePool limit" not in frontend_log and "unexpected error" not in frontend_log, frontend_log[-5000:]
        assert "dependency unavailable" not in frontend_log, frontend_log[-5000:]
        assert_still_up(lab)
