"""The admin listener's front door in process: size cap and authentication before the body is
read, /readyz without the database's words, the session cookie's Secure flag behind a proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra_admin import console
from acme_ra_admin.app import create_app
from acme_ra_admin.gate import MAX_BODY_BYTES
from acme_ra_admin.operations import AdminOperations, NatsLink

from .conftest import AdminApp
from .test_admin_console import FORM, log_in

HUNDRED_MB = str(100 * 1024 * 1024)


class Exchange:
    """One request driven straight through the ASGI app, counting how often it asked for the body."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.body_reads = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    async def receive(self) -> dict[str, Any]:
        self.body_reads += 1
        if not self.chunks:
            await asyncio.Event().wait()  # the client sends nothing more: wait for ever
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


async def drive(app: FastAPI, method: str, path: str, headers: dict[str, str],
                chunks: list[bytes] | None = None) -> Exchange:
    exchange = Exchange(list(chunks or []))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 9443),
    }
    await asyncio.wait_for(app(scope, exchange.receive, exchange.send), 5)
    return exchange


@pytest.fixture
def app_of(admin_app: AdminApp) -> Callable[[], FastAPI]:
    def app() -> FastAPI:
        transport = admin_app.client._transport  # the ASGI app the client drives
        return transport.app  # type: ignore[attr-defined,no-any-return]

    return app


@pytest.mark.parametrize("path", ["/api/eab-keys", "/api/certificates/x/revoke"])
async def test_an_unauthenticated_api_call_is_refused_before_its_body(app_of: Callable[[], FastAPI],
                                                                       path: str) -> None:
    done = await drive(app_of(), "POST", path, {"content-type": "application/json", "content-length": "2000"})
    assert done.status == 401 and done.body_reads == 0
    assert done.headers["www-authenticate"] == "Bearer" and done.headers["connection"] == "close"


async def test_a_declared_oversize_body_is_refused_before_it_is_read(admin_app: AdminApp,
                                                                      app_of: Callable[[], FastAPI]) -> None:
    for headers in ({"content-length": HUNDRED_MB} | admin_app.auth, {"content-length": HUNDRED_MB},
                    {"content-length": str(MAX_BODY_BYTES + 1)} | admin_app.auth):
        done = await drive(app_of(), "POST", "/api/eab-keys", headers)
        assert done.status == 413 and done.body_reads == 0, headers
        assert done.headers["connection"] == "close"
    for path in ("/login", "/eab-keys"):  # the console's forms too, logged in or not
        done = await drive(app_of(), "POST", path, {"content-length": HUNDRED_MB} | FORM)
        assert done.status == 413 and done.body_reads == 0


async def test_a_chunked_body_is_cut_at_the_cap(admin_app: AdminApp, app_of: Callable[[], FastAPI]) -> None:
    chunks = [b"{" + b" " * 16_384] * (MAX_BODY_BYTES // 16_384 + 2)
    done = await drive(app_of(), "POST", "/api/eab-keys",
                       {"transfer-encoding": "chunked", "content-type": "application/json"} | admin_app.auth, chunks)
    assert done.status == 413, done.body
    assert done.body_reads == MAX_BODY_BYTES // 16_385 + 1  # stopped at the first chunk past the cap
    assert await admin_app.ops.list_eab_keys() == []


async def test_a_console_form_without_a_session_is_not_read(app_of: Callable[[], FastAPI]) -> None:
    for path in ("/eab-keys", "/certificates/x/revoke", "/logout"):
        done = await drive(app_of(), "POST", path, {"content-length": "20"} | FORM)
        assert done.status == 303 and done.headers["location"] == "/login" and done.body_reads == 0


async def test_within_the_cap_everything_still_works(admin_app: AdminApp) -> None:
    created = await admin_app.client.post("/api/eab-keys", json={"label": "x" * 100}, headers=admin_app.auth)
    assert created.status_code == 201, created.text
    csrf = await log_in(admin_app)
    form = await admin_app.client.post("/eab-keys", content=f"label=y&csrf={csrf}", headers=FORM)
    assert form.status_code == 200 and 'id="new-hmac"' in form.text
    assert (await admin_app.client.get("/api/openapi.json")).status_code == 200  # no token needed


async def test_readyz_does_not_repeat_the_database_error(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(state_dir=tmp_path, nats_url="")
    bad = "postgresql+asyncpg://acme_ra_nobody:Hunter2-secret@127.0.0.1:1/nowhere"
    app = create_app(settings, ops=AdminOperations(settings, Database(bad), NatsLink("")))
    async with app.router.lifespan_context(app):
        done = await drive(app, "GET", "/readyz", {})
        await app.state.ops.db.dispose()
    assert done.status == 503
    assert done.body == b'{"status":"unavailable","failed":{"database":"unavailable"}}'
    assert "readiness: the database does not answer" in caplog.text  # the detail goes to the log


@pytest.mark.parametrize("proxies, forwarded, secure", [
    ("", None, False),
    ("", "https", False),  # anyone may send the header: only a trusted proxy's counts
    ("127.0.0.0/8", "https", True),
    ("127.0.0.0/8", "http", False),
    ("10.0.0.0/8", "https", False),
])
async def test_the_session_cookie_is_secure_behind_a_trusted_tls_proxy(
    fresh_database_url: str, tmp_path: Path, proxies: str, forwarded: str | None, secure: bool
) -> None:
    settings = Settings(state_dir=tmp_path / "var", database_url=fresh_database_url, nats_url="",
                        trusted_proxies=proxies)
    await asyncio.to_thread(upgrade, fresh_database_url)
    async for client, token in _client(settings):
        headers = FORM | ({"x-forwarded-proto": forwarded} if forwarded else {})
        response = await client.post("/login", content=f"token={token}", headers=headers)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(console.SESSION_COOKIE) and ("; Secure" in cookie) == secure, cookie


async def _client(settings: Settings) -> AsyncIterator[tuple[Any, str]]:
    import httpx

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        token = await app.state.ops.create_admin_token("t")
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
            yield client, token.token
