"""The account's orders list (RFC 8555 §7.1.2.1) on an account with 10,000 orders, through the lab's
frontend over HTTPS: walking ``Link: rel="next"`` with POST-as-GET lists every order that is not
invalid exactly once, also when orders are created during the walk."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from acme_ra.db.engine import Database
from acme_ra.db.models import Order, OrderStatus
from acme_ra_frontend.accounts import ORDERS_PAGE_SIZE
from tests.conformance.client import TestAcmeClient
from tests.support.lab import Lab

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HISTORY_ORDERS = 10_000
# Pages after which the walk creates an order (newOrder through the frontend).
CREATE_AFTER_PAGES = (1, 30, 60)
# Page after which an order already listed becomes invalid (an offset would then skip one).
INVALIDATE_AFTER_PAGE = 2
NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


async def listed_ids(database_url: str, account_id: str) -> set[str]:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            rows = await session.execute(select(Order.id).where(Order.account_id == account_id,
                                                                Order.status != OrderStatus.invalid))
            return set(rows.scalars())
    finally:
        await db.dispose()


async def invalidate(database_url: str, order_id: str) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await session.execute(update(Order).where(Order.id == order_id).values(status=OrderStatus.invalid))
    finally:
        await db.dispose()


async def test_every_order_once_across_pages(lab: Lab, lab_database_url: str) -> None:
    tls = ssl.create_default_context(cafile=str(lab.ca_bundle))
    async with httpx.AsyncClient(verify=tls, timeout=60) as http:
        client = TestAcmeClient(http, lab.directory_url)
        await client.load_directory()
        registered = await client.register()
        assert registered.status == 201, registered.text
        assert client.kid
        account_id = client.kid.rsplit("/", 1)[1]
        # bench.history (run as a command, as users do): COPY or multi-row INSERTs.
        fill = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bench.history", "--database-url", lab_database_url,
                               "--orders", str(HISTORY_ORDERS), "--account", account_id, "--json"],
                              capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
        assert fill.returncode == 0, fill.stderr

        seen: list[str] = []
        created: list[str] = []
        url: str | None = registered.body["orders"]
        pages = 0
        dropped = ""
        while url:
            page = await client.post(url)
            assert page.status == 200, page.text
            assert len(page.body["orders"]) <= ORDERS_PAGE_SIZE
            seen += page.body["orders"]
            pages += 1
            if pages == INVALIDATE_AFTER_PAGE:  # one listed order leaves the list: no later one is skipped
                dropped = seen[0].rsplit("/", 1)[1]
                await invalidate(lab_database_url, dropped)
            if pages in CREATE_AFTER_PAGES:
                new = await client.post(client.directory["newOrder"], {"identifiers": [
                    {"type": "dns", "value": f"list{pages}.example.org"}]})
                assert new.status == 201, new.text
                created.append(new.location or "")
            found = NEXT.search(page.headers.get("link", ""))
            url = found.group(1) if found else None

    expected = await listed_ids(lab_database_url, account_id) | {dropped}
    assert len(expected) > HISTORY_ORDERS * 0.8  # bench.history's mix: 15 % invalid
    assert len(seen) == len(set(seen)), "an order listed twice"
    assert {order_url.rsplit("/", 1)[1] for order_url in seen} == expected
    assert set(created) <= set(seen)
    assert pages == -(-len(seen) // ORDERS_PAGE_SIZE)  # every page full but the last


async def test_a_forged_cursor_is_malformed(lab: Lab) -> None:
    tls = ssl.create_default_context(cafile=str(lab.ca_bundle))
    async with httpx.AsyncClient(verify=tls, timeout=60) as http:
        client = TestAcmeClient(http, lab.directory_url)
        await client.load_directory()
        registered = await client.register()
        orders = registered.body["orders"]
        for cursor in ("1", "x.abc", "999999999999999999.abc", "1.a/b", "1."):
            reply = await client.post(f"{orders}?after={cursor}")
            assert reply.status == 400 and reply.problem_type == "malformed", (cursor, reply.text)
        empty = await client.post(f"{orders}?after=1.abc")
        assert empty.status == 200 and empty.body["orders"] == []
