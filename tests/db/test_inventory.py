"""The inventory's facts about each certificate: the hash of its names (a renewal has the same)
and its issuer, written at issuance and filled in by migration 0013 for older certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from pathlib import Path

from cryptography import x509
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from acme_ra.config import ENV_PREFIX
from acme_ra.db import inventory
from acme_ra.db.engine import Database
from acme_ra.db.lifecycle import issuer_name, names_sha256
from acme_ra.db.migrate import upgrade
from acme_ra_signer import expiry
from tests.admin.conftest import acme_ra
from tests.support import database
from tests.support.history import History, certificate_pem
from tests.support.lab import base_environment


def test_a_renewal_has_the_same_names_hash_whatever_their_order_and_case() -> None:
    first = x509.load_pem_x509_certificate(certificate_pem("www.example.org", "example.org").encode())
    renewal = x509.load_pem_x509_certificate(certificate_pem("Example.org", "www.example.org").encode())
    other = x509.load_pem_x509_certificate(certificate_pem("example.org").encode())
    assert names_sha256(first) == names_sha256(renewal) != names_sha256(other)
    assert names_sha256(first) == hashlib.sha256(b"example.org\nwww.example.org").hexdigest()
    assert issuer_name(first) == "CN=Test Issuing CA"


async def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(sql))
            return [tuple(row) for row in result.all()] if result.returns_rows else []
    finally:
        await engine.dispose()


def test_migration_0013_fills_in_the_certificates_stored_before_it(tmp_path: Path) -> None:
    with database.fresh_database(tmp_path / "db") as url:
        upgrade(url, "0012")
        pem = certificate_pem("b.example.org", "a.example.org")
        stamp = "'2026-01-01 00:00:00'"
        asyncio.run(rows(url, "INSERT INTO accounts (id, key_thumbprint, jwk, status, contact, tos_agreed, created_at) "
                              f"VALUES ('acct', 'thumb', '{{}}', 'valid', '[]', true, {stamp})"))
        for order_id in ("o1", "o2"):
            asyncio.run(rows(url, "INSERT INTO orders (id, account_id, provisioner, status, expires, identifiers, "
                                  f"created_at, updated_at) VALUES ('{order_id}', 'acct', 'acme', 'valid', {stamp}, "
                                  f"'[]', {stamp}, {stamp})"))
        for certificate_id, order_id, chain in (("c1", "o1", pem), ("c2", "o2", "not a PEM")):
            asyncio.run(rows(url, "INSERT INTO certificates (id, order_id, account_id, serial, chain_pem, not_before, "
                                  f"not_after, created_at) VALUES ('{certificate_id}', '{order_id}', 'acct', '01', "
                                  f"'{chain}', {stamp}, {stamp}, {stamp})"))
        upgrade(url)
        found = {row[0]: row[1:] for row in asyncio.run(
            rows(url, "SELECT id, names_sha256, issuer FROM certificates"))}
    assert found["c1"] == (hashlib.sha256(b"a.example.org\nb.example.org").hexdigest(), "CN=Test Issuing CA")
    assert found["c2"] == ("", None)  # unreadable: marked, not retried for ever


NOW = dt.datetime.now(dt.UTC)


async def test_listing_filters_and_the_certificates_nothing_replaced(history_db: Database, history: History) -> None:
    soon = NOW + dt.timedelta(days=5)
    lapsing, _ = await history.order("valid", NOW, not_after=soon, names="lapsing.example.org", upstream="sectigo",
                                     profile="server")
    renewed, _ = await history.order("valid", NOW, not_after=soon + dt.timedelta(hours=1), names="renewed.example.org",
                                     upstream="sectigo")
    await history.order("valid", NOW, not_after=NOW + dt.timedelta(days=80), names="renewed.example.org",
                        upstream="certinext")
    later, _ = await history.order("valid", NOW, not_after=NOW + dt.timedelta(days=20), names="later.example.org",
                                   upstream=None)
    await history.order("valid", NOW, not_after=NOW - dt.timedelta(days=1), names="gone.example.org")
    await history.order("valid", NOW, not_after=soon, names="revoked.example.org", revoked=True)

    async def listed(**wanted: object) -> list[str]:
        async with history_db.transaction() as session:
            query = inventory.certificates_query(inventory.CertificateFilter(**wanted), NOW)  # type: ignore[arg-type]
            return [row.Certificate.order_id for row in (await session.execute(query)).all()]

    month = dt.timedelta(days=30)
    assert await listed(expiring_within=month, revoked=False) == [lapsing, renewed, later]  # soonest first
    assert await listed(expiring_within=month, unreplaced=True) == [lapsing, later]
    assert await listed(expiring_within=month, upstream="sectigo") == [lapsing, renewed]
    assert await listed(expiring_within=month, upstream="lab") == [later]
    assert await listed(profile="server") == [lapsing]
    assert len(await listed(issuer="history ca")) == 6
    async with history_db.transaction() as session:
        counts = await inventory.expiring_unreplaced(session, NOW)
    assert counts == {("sectigo", "7d"): 1, ("sectigo", "30d"): 1, ("lab", "7d"): 0, ("lab", "30d"): 1}


async def test_the_signer_sets_a_gauge_per_upstream_and_window(history_db: Database, history: History) -> None:
    await history.order("valid", NOW, not_after=NOW + dt.timedelta(days=3), names="x.example.org", upstream="pebble")
    await expiry.refresh_once(history_db, ["pebble", "other"])

    def gauge(upstream: str, within: str) -> float | None:
        return REGISTRY.get_sample_value("acme_ra_certificates_expiring", {"upstream": upstream, "within": within})

    assert (gauge("pebble", "7d"), gauge("pebble", "30d"), gauge("other", "7d")) == (1, 1, 0)


async def test_charts_count_per_week_and_per_day(history_db: Database, history: History) -> None:
    for days in (1, 2, 9, 100):
        await history.order("valid", NOW, not_after=NOW + dt.timedelta(days=days), names=f"w{days}.example.org",
                            created=NOW - dt.timedelta(days=days % 7))
    async with history_db.transaction() as session:
        weeks = await inventory.expiring_per_week(session, NOW, 13)
        daily = await inventory.issued_per_day(session, NOW, 7)
    assert weeks[:3] == [2, 1, 0] and sum(weeks) == 3
    assert daily == [0, 0, 0, 0, 3, 1, 0]  # issued 2 (2, 9 and 100 % 7) and 1 day ago


async def test_the_command_lists_what_expires_and_refuses_a_bad_duration(history_url: str, history: History,
                                                                         tmp_path: Path) -> None:
    lapsing, _ = await history.order("valid", NOW, not_after=NOW + dt.timedelta(days=5), names="l.example.org",
                                     upstream="pebble")
    await history.order("valid", NOW, not_after=NOW + dt.timedelta(days=50), names="far.example.org")
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path), f"{ENV_PREFIX}DATABASE_URL": history_url}
    listed = json.loads(acme_ra(["certs", "list", "--expiring", "30d", "--unreplaced", "--json"], env, check=True).stdout)
    assert [(row["order_id"], row["upstream"], row["issuer"]) for row in listed] == [(lapsing, "pebble", "CN=History CA")]
    table = acme_ra(["certs", "list", "--expiring", "2w", "--upstream", "pebble"], env, check=True).stdout
    assert "UPSTREAM" in table and "pebble" in table
    bad = acme_ra(["certs", "list", "--expiring", "soon"], env)
    assert bad.returncode == 2 and "--expiring: 'soon' is not a duration" in bad.stderr
