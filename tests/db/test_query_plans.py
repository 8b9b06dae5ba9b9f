"""Every statement the services run on the request path and the job path is served by an index
once the tables are large: a PostgreSQL of the test's own logs the plan of every statement
(auto_explain), the tables hold years of history (bench.history), and a lab issues and revokes
certificates through certbot (http-01 and dns-01), reads an account's orders list page by page and
purges; a sequential scan of a large table in any plan fails the test, naming the statement."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from acme_ra.db import retention
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from tests.conformance.client import TestAcmeClient
from tests.support.certbot import CERTBOT, certonly, trust_environment
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, Lab, running_lab
from tests.support.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
# Historical orders in the tables (each with its authorization, 3 challenges, ...).
HISTORY_ORDERS = 30_000
# Orders of the account whose orders list the test reads, page by page.
ORDERS_LISTED = 1_000
# A table with more rows than this is large: a sequential scan of it is a missing index.
LARGE_ROWS = 10_000


# Every statement's plan into the server's log, as JSON.
AUTO_EXPLAIN = {"session_preload_libraries": "auto_explain", "auto_explain.log_min_duration": "0",
                "auto_explain.log_format": "json", "auto_explain.log_nested_statements": "on"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(settings=AUTO_EXPLAIN)
    try:
        server.start()
        subprocess.run(["psql", server.psql_url(), "-qc", "CREATE DATABASE ra"], check=True, capture_output=True,
                       timeout=60)
        yield server
    finally:
        server.remove()


def plans(log: str) -> Iterator[dict[str, Any]]:
    """The JSON plans auto_explain wrote into ``log`` ({"Query Text": ..., "Plan": {...}})."""
    decoder = json.JSONDecoder()
    position = 0
    while (found := log.find("plan:\n", position)) >= 0:
        start = log.find("{", found)
        try:
            plan, position = decoder.raw_decode(log, start)
        except json.JSONDecodeError:
            position = found + 1
            continue
        yield plan


def seq_scans(node: dict[str, Any]) -> Iterator[str]:
    if node.get("Node Type") == "Seq Scan":
        yield node["Relation Name"]
    for child in node.get("Plans", ()):
        yield from seq_scans(child)


async def large_tables(url: str) -> set[str]:
    db = Database(url)
    try:
        async with db.transaction() as session:
            rows = await session.execute(text(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace "
                "AND reltuples > :large"), {"large": LARGE_ROWS})
            return set(rows.scalars())
    finally:
        await db.dispose()


async def purge(url: str) -> None:
    db = Database(url)
    try:
        report = await retention.purge(db, dt.timedelta(days=30), batch=100)
        assert report.rows["orders"] > 0
    finally:
        await db.dispose()


async def walk_orders_list(lab: Lab, url: str) -> None:
    """An account with ORDERS_LISTED orders reads its orders list to the end (every page after
    the first starts from a cursor)."""
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(lab.ca_bundle)), timeout=60) as http:
        client = TestAcmeClient(http, lab.directory_url)
        await client.load_directory()
        registered = await client.register()
        assert registered.status == 201 and client.kid, registered.text
        fill = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "bench.history", "--database-url", url, "--orders",
                             str(ORDERS_LISTED), "--account", client.kid.rsplit("/", 1)[1], "--json"],
            check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert fill.returncode == 0, fill.stderr
        next_url: str | None = registered.body["orders"]
        pages = 0
        while next_url:
            page = await client.post(next_url)
            assert page.status == 200, page.text
            pages += 1
            found = re.search(r'<([^>]+)>;\s*rel="next"', page.headers.get("link", ""))
            next_url = found.group(1) if found else None
        assert pages > 2


def test_no_statement_scans_a_large_table(postgres: PostgresServer, test_dns: TestDnsServer,
                                          tmp_path: Path) -> None:
    url = postgres.url("ra")
    upgrade(url)
    fill = subprocess.run([sys.executable, "-m", "bench.history", "--database-url", url, "--orders",
                           str(HISTORY_ORDERS), "--json"], check=False, capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert fill.returncode == 0, fill.stderr
    large = asyncio.run(large_tables(url))
    assert {"orders", "authorizations", "challenges", "certificates"} <= large
    start = postgres.log.stat().st_size
    with running_lab(tmp_path / "var", url, test_dns.resolver_setting, test_dns.txt_dir) as lab:
        issued = certonly(lab, [f"plans.{TEST_ZONE}"], "http-01", tmp_path / "http")
        assert issued.returncode == 0, issued.describe()
        both = certonly(lab, [f"plans-dns.{TEST_ZONE}", f"*.plans-dns.{TEST_ZONE}"], "dns-01", tmp_path / "dns")
        assert both.returncode == 0, both.describe()
        revoke = subprocess.run(
            [str(CERTBOT), "revoke", "--non-interactive", "--server", lab.directory_url, "--cert-path",
             str(issued.live / "cert.pem"), "--reason", "superseded", "--no-delete-after-revoke",
             "--config-dir", str(issued.config_dir), "--work-dir", str(tmp_path / "http" / "work"),
             "--logs-dir", str(tmp_path / "http" / "logs")],
            env=trust_environment(lab.ca_bundle), capture_output=True, text=True, timeout=120, check=False)
        assert revoke.returncode == 0, revoke.stdout + revoke.stderr
        asyncio.run(walk_orders_list(lab, url))
        asyncio.run(purge(url))
    log = postgres.log.read_text(errors="replace")[start:]
    seen, scanning = 0, []
    for plan in plans(log):
        seen += 1
        tables = set(seq_scans(plan["Plan"])) & large
        if tables:
            scanning.append(f"{sorted(tables)}: {' '.join(plan['Query Text'].split())[:400]}")
    assert seen > 100, f"auto_explain logged {seen} plans: is it loaded?\n{log[-3000:]}"
    assert not scanning, "sequential scans of large tables:\n" + "\n".join(sorted(set(scanning)))
