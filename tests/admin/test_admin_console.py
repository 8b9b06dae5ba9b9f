"""The console in process: login, sessions, CSRF, every page renders, escaping."""

from __future__ import annotations

import time

import httpx
import pytest

from acme_ra_admin import console

from .conftest import AdminApp
from .test_admin_api import insert_order

FORM = {"content-type": "application/x-www-form-urlencoded"}
PAGES = ["/orders", "/certificates", "/accounts", "/eab-keys", "/upstream", "/queues"]


async def log_in(admin_app: AdminApp) -> str:
    """Log in; the CSRF token of the session."""
    response = await admin_app.client.post("/login", content=f"token={admin_app.token}", headers=FORM)
    assert response.status_code == 303 and response.headers["location"] == "/orders"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = await admin_app.client.get("/eab-keys")
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize("path", PAGES)
async def test_pages_want_a_login(admin_app: AdminApp, path: str) -> None:
    response = await admin_app.client.get(path)
    assert response.status_code == 303 and response.headers["location"] == "/login"


async def test_every_page_renders_with_data(admin_app: AdminApp) -> None:
    _, order_id = await insert_order(admin_app)
    await log_in(admin_app)
    for path in PAGES + [f"/orders/{order_id}", "/orders?status=invalid", "/orders/nope"]:
        response = await admin_app.client.get(path)
        assert response.status_code == (404 if path.endswith("nope") else 200), (path, response.text[-2000:])
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert "<script" not in response.text
    orders = (await admin_app.client.get("/orders")).text
    assert 'href="http://jaeger.test/trace/4bf92f3577b34da6a3ce929d0e0e4736"' in orders
    assert "no TXT record" in orders


async def test_a_wrong_token_is_refused(admin_app: AdminApp) -> None:
    response = await admin_app.client.post("/login", content="token=acmera_nope", headers=FORM)
    assert response.status_code == 401 and "not a valid admin token" in response.text
    assert "set-cookie" not in response.headers


async def test_forms_need_the_csrf_token(admin_app: AdminApp) -> None:
    csrf = await log_in(admin_app)
    refused = await admin_app.client.post("/eab-keys", content="label=x", headers=FORM)
    assert refused.status_code == 403
    wrong = await admin_app.client.post("/eab-keys", content="label=x&csrf=" + "A" * 43, headers=FORM)
    assert wrong.status_code == 403
    assert await admin_app.ops.list_eab_keys() == []
    created = await admin_app.client.post("/eab-keys", content=f"label=x&allow=.example.org&csrf={csrf}", headers=FORM)
    assert created.status_code == 200 and 'id="new-hmac"' in created.text
    [key] = await admin_app.ops.list_eab_keys()
    assert key.policy is not None and key.policy.allow == [".example.org"]


async def test_labels_are_escaped(admin_app: AdminApp) -> None:
    csrf = await log_in(admin_app)
    await admin_app.client.post("/eab-keys", content=f"label=%3Cb%3Ehi%3C%2Fb%3E&csrf={csrf}", headers=FORM)
    page = (await admin_app.client.get("/eab-keys")).text
    assert "&lt;b&gt;hi&lt;/b&gt;" in page and "<b>hi</b>" not in page


async def test_a_revoked_token_ends_its_sessions(admin_app: AdminApp) -> None:
    await log_in(admin_app)
    assert (await admin_app.client.get("/orders")).status_code == 200
    [token] = await admin_app.ops.list_admin_tokens()
    await admin_app.ops.revoke_admin_token(token.id)
    assert (await admin_app.client.get("/orders")).status_code == 303


async def test_tampered_or_expired_sessions_are_refused(admin_app: AdminApp) -> None:
    key = b"k" * 32
    cookie = console.make_session(key, "token-id")
    assert console.session_token_id(key, cookie) == "token-id"
    token_id, expires, mac = cookie.split(".")
    assert console.session_token_id(key, f"other.{expires}.{mac}") is None
    assert console.session_token_id(key, f"{token_id}.{int(expires) + 1}.{mac}") is None
    assert console.session_token_id(b"x" * 32, cookie) is None
    assert console.session_token_id(key, cookie, now=time.time() + console.SESSION_LIFETIME_SECONDS + 1) is None
    forged = httpx.Cookies({console.SESSION_COOKIE: console.make_session(key, "token-id")})
    admin_app.client.cookies = forged
    assert (await admin_app.client.get("/orders")).status_code == 303
