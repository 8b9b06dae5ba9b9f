"""The audit log (who, when, from where, what) of every admin change through the API, the console
and ``acme-ra``; admin tokens with a scope and an expiry; the migration that brings both."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text, update

from acme_ra.config import ENV_PREFIX
from acme_ra.db import audit, retention
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import AdminToken, AuditEntry
from acme_ra_admin import tokens
from acme_ra_admin.app import create_app
from acme_ra_admin.operations import AdminOperations
from tests.support import database
from tests.support.lab import base_environment

from .conftest import AdminApp, acme_ra
from .test_admin_api import insert_order
from .test_admin_console import FORM, log_in


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def when(entry: dict[str, object]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(entry["at"]))


async def token_id_of(admin_app: AdminApp, label: str) -> str:
    return next(t.id for t in await admin_app.ops.list_admin_tokens() if t.label == label)


async def test_every_api_change_is_recorded_with_its_token_time_and_address(admin_app: AdminApp) -> None:
    client, auth = admin_app.client, admin_app.auth
    token_id = await token_id_of(admin_app, "test")
    account_id, _ = await insert_order(admin_app)
    before = now()
    key = (await client.post("/api/eab-keys", json={"label": "physics", "allow": [".physics.example.edu"]},
                             headers=auth)).json()
    assert (await client.post(f"/api/eab-keys/{key['kid']}/revoke", headers=auth)).status_code == 200
    assert (await client.post(f"/api/accounts/{account_id}/deactivate", headers=auth)).status_code == 200
    refused = await client.post(f"/api/eab-keys/{key['kid']}/revoke", headers=auth)  # a conflict changes nothing
    after = now()
    assert refused.status_code == 409

    entries = (await client.get("/api/audit", headers=auth, params={"token_id": token_id})).json()
    assert [(e["action"], e["subject"]) for e in entries] == [
        ("account.deactivate", account_id), ("eab_key.revoke", key["kid"]), ("eab_key.create", key["kid"])]
    for entry in entries:
        assert entry["token_id"] == token_id and entry["actor"] == "test"
        assert entry["client"] == "127.0.0.1"  # httpx's ASGI transport's peer
        assert before <= when(entry) <= after
    assert entries[2]["detail"] == {"label": "physics", "profile": None,
                                    "policy": {"allow": [".physics.example.edu"], "deny": [], "wildcards": True}}


async def test_the_console_records_its_changes_with_the_sessions_token(admin_app: AdminApp) -> None:
    csrf = await log_in(admin_app)
    token_id = await token_id_of(admin_app, "test")
    created = await admin_app.client.post("/eab-keys", content=f"label=chemistry&csrf={csrf}", headers=FORM)
    assert created.status_code == 200
    [entry] = await admin_app.ops.list_audit(audit.AuditFilter(action="eab_key.create"))
    assert entry.token_id == token_id and entry.actor == "test" and entry.client == "127.0.0.1"
    assert entry.detail is not None and entry.detail["label"] == "chemistry"
    page = (await admin_app.client.get("/audit")).text
    assert 'data-action="eab_key.create"' in page and entry.subject in page and "chemistry" in page


async def test_a_trusted_proxys_client_address_is_recorded(admin_app: AdminApp) -> None:
    settings = admin_app.settings.model_copy(update={"trusted_proxies": "127.0.0.0/8"})
    app = create_app(settings, AdminOperations.from_settings(settings))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as client:
        headers = admin_app.auth | {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}
        key = (await client.post("/api/eab-keys", json={"label": "x"}, headers=headers)).json()
        await app.state.ops.close()
    [entry] = (await admin_app.client.get("/api/audit", headers=admin_app.auth,
                                          params={"subject": key["kid"]})).json()
    assert entry["client"] == "203.0.113.7"  # the rightmost hop the trusted proxy saw, not its own address


async def test_the_audit_api_filters_and_pages(admin_app: AdminApp) -> None:
    client, auth = admin_app.client, admin_app.auth
    kids = [(await client.post("/api/eab-keys", json={"label": f"k{i}"}, headers=auth)).json()["kid"] for i in range(5)]
    first = (await client.get("/api/audit", headers=auth, params={"action": "eab_key.create", "limit": 2})).json()
    second = (await client.get("/api/audit", headers=auth,
                               params={"action": "eab_key.create", "limit": 2, "offset": 2})).json()
    last = (await client.get("/api/audit", headers=auth,
                             params={"action": "eab_key.create", "limit": 2, "offset": 4})).json()
    assert [e["subject"] for e in first + second + last] == kids[::-1]
    prefix = (await client.get("/api/audit", headers=auth, params={"action": "eab_key."})).json()
    assert len(prefix) == 5
    assert (await client.get("/api/audit", headers=auth, params={"action": "admin_token.create"})).json()[0][
        "actor"].startswith("cli:")  # the fixture's token, made on the database
    assert (await client.get("/api/audit", headers=auth, params={"limit": 0})).status_code == 422
    await log_in(admin_app)
    page = (await client.get("/audit?action=eab_key.create&rows=25")).text
    assert all(kid in page for kid in kids) and 'id="next-page"' not in page


async def test_the_console_pages_the_audit_log(admin_app: AdminApp) -> None:
    async with admin_app.ops.db.transaction() as session:
        for i in range(30):
            await audit.record(session, audit.Actor.local(), "eab_key.revoke", f"kid-{i:02}",
                               at=now() - dt.timedelta(minutes=i))
    await log_in(admin_app)
    first = (await admin_app.client.get("/audit?action=eab_key.revoke&rows=25")).text
    assert "kid-00" in first and "kid-24" in first and "kid-25" not in first
    assert 'href="?action=eab_key.revoke&amp;rows=25&amp;page=2"' in first
    second = (await admin_app.client.get("/audit?action=eab_key.revoke&rows=25&page=2")).text
    assert "kid-25" in second and "kid-29" in second and "kid-24" not in second and 'id="next-page"' not in second


async def test_retention_keeps_the_audit_log(admin_app: AdminApp) -> None:
    long_ago = now() - dt.timedelta(days=3650)
    await admin_app.ops.audit(None, "certificate.renew_early", "cert-1", {"names": ["a.example.org"]})
    async with admin_app.ops.db.transaction() as session:
        await session.execute(update(AuditEntry).values(at=long_ago))
    report = await retention.purge(admin_app.ops.db, dt.timedelta(days=1))
    assert not report.skipped
    entries = await admin_app.ops.list_audit()
    assert {e.action for e in entries} >= {"certificate.renew_early", "admin_token.create"}
    assert all(e.at == long_ago for e in entries)


# Token scope and expiry -----------------------------------------------------------------------

async def test_a_read_only_token_reads_but_changes_nothing(admin_app: AdminApp) -> None:
    reader = await admin_app.ops.create_admin_token("auditor", scope="read-only")
    auth = {"Authorization": f"Bearer {reader.token}"}
    client = admin_app.client
    assert (await client.get("/api/eab-keys", headers=auth)).status_code == 200
    assert (await client.get("/api/audit", headers=auth)).status_code == 200
    refused = await client.post("/api/eab-keys", json={"label": "x"}, headers=auth)
    assert refused.status_code == 403 and refused.json() == {"detail": "this admin token is read-only"}
    assert (await client.post("/api/certificates/x/revoke", headers=auth)).status_code == 403
    assert await admin_app.ops.list_eab_keys() == []
    assert await admin_app.ops.list_audit(audit.AuditFilter(token_id=reader.id)) == []

    # The console: no forms that change anything, and a form posted anyway is refused.
    login = await client.post("/login", content=f"token={reader.token}", headers=FORM)
    assert login.status_code == 303
    page = (await client.get("/eab-keys")).text
    assert 'id="create-eab"' not in page and "read-only" in page
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]  # the logout form's
    posted = await client.post("/eab-keys", content=f"label=x&csrf={csrf}", headers=FORM)
    assert posted.status_code == 403 and "read-only" in posted.text
    assert (await client.get("/certificates/x/revoke")).status_code == 403
    assert await admin_app.ops.list_eab_keys() == []
    assert (await client.post("/logout", content=f"csrf={csrf}", headers=FORM)).status_code == 303


async def test_an_expired_token_is_refused_and_logged_as_such(admin_app: AdminApp,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    short = await admin_app.ops.create_admin_token("contractor", expires_in=dt.timedelta(hours=1))
    assert short.expires_at is not None and dt.timedelta(minutes=59) < short.expires_at - now() <= dt.timedelta(hours=1)
    auth = {"Authorization": f"Bearer {short.token}"}
    assert (await admin_app.client.get("/api/eab-keys", headers=auth)).status_code == 200
    login = await admin_app.client.post("/login", content=f"token={short.token}", headers=FORM)
    assert login.status_code == 303
    assert (await admin_app.client.get("/orders")).status_code == 200
    async with admin_app.ops.db.transaction() as session:
        await session.execute(update(AdminToken).where(AdminToken.id == short.id)
                              .values(expires_at=now() - dt.timedelta(seconds=1)))
    refused = await admin_app.client.get("/api/eab-keys", headers=auth)
    assert refused.status_code == 401
    assert any(getattr(r, "reason", None) == "expired token" for r in caplog.records)
    assert (await admin_app.client.get("/orders")).status_code == 303  # its console session ends too
    again = await admin_app.client.post("/login", content=f"token={short.token}", headers=FORM)
    assert again.status_code == 401


async def test_a_bad_scope_or_lifetime_is_refused(admin_app: AdminApp) -> None:
    from acme_ra_admin.errors import OperationError

    with pytest.raises(OperationError, match="not one of operator, read-only"):
        await admin_app.ops.create_admin_token("x", scope="admin")
    with pytest.raises(OperationError, match="must be positive"):
        await admin_app.ops.create_admin_token("x", expires_in=dt.timedelta(0))


def test_tokens_made_before_the_migration_keep_working_as_operators(tmp_path: Path) -> None:
    """A token row written by the 0013 schema, then the migration: operator, no expiry, accepted."""

    async def scenario(url: str) -> None:
        db = Database(url)
        try:
            async with db.transaction() as session:
                await session.execute(text(
                    "INSERT INTO admin_tokens (id, token_sha256, label, created_at) VALUES (:id, :sha, 'old', :at)"),
                    {"id": "old-token", "sha": tokens.token_sha256("acmera_old"), "at": dt.datetime(2026, 1, 1)})
            await asyncio.to_thread(upgrade, url)
            async with db.transaction() as session:
                row = await tokens.authenticate(session, "acmera_old")
                assert row is not None and row.scope == "operator" and row.expires_at is None
                assert tokens.may_change(row)
        finally:
            await db.dispose()

    with database.fresh_database(tmp_path / "db") as url:
        upgrade(url, "0013")
        asyncio.run(scenario(url))


def test_the_cli_records_who_ran_it_and_lists_the_log(tmp_path: Path) -> None:
    with database.fresh_database(tmp_path / "db") as url:
        env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path / "var"), f"{ENV_PREFIX}DATABASE_URL": url}
        acme_ra(["db", "migrate"], env, check=True)
        made = json.loads(acme_ra(["admin-token", "create", "--label", "grafana", "--scope", "read-only",
                                   "--expires-in", "90d", "--json"], env, check=True).stdout)
        assert made["scope"] == "read-only"
        lifetime = dt.datetime.fromisoformat(made["expires_at"]) - now()
        assert dt.timedelta(days=89, hours=23) < lifetime <= dt.timedelta(days=90)
        listed = acme_ra(["admin-token", "list"], env, check=True).stdout
        assert "read-only" in listed and "live" in listed
        acme_ra(["admin-token", "revoke", made["id"]], env, check=True)
        key = json.loads(acme_ra(["eab", "create", "--label", "web", "--json"], env, check=True).stdout)
        bad = acme_ra(["admin-token", "create", "--expires-in", "soon"], env)
        assert bad.returncode == 2 and "--expires-in" in bad.stderr

        entries = json.loads(acme_ra(["audit", "list", "--json"], env, check=True).stdout)
        assert [(e["action"], e["subject"]) for e in entries] == [
            ("eab_key.create", key["kid"]), ("admin_token.revoke", made["id"]), ("admin_token.create", made["id"])]
        for entry in entries:
            assert entry["actor"] == f"cli:{getpass.getuser()}" and entry["client"] == "local"
            assert entry["token_id"] is None
        assert entries[2]["detail"]["scope"] == "read-only"
        table = acme_ra(["audit", "list", "--action", "admin_token."], env, check=True).stdout
        assert "admin_token.revoke" in table and "eab_key.create" not in table and "cli:" in table
