"""The admin API in process, on a fresh database: auth, EAB keys, accounts, orders, OpenAPI."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from acme_ra.db.models import Account, Authorization, Challenge, Order, OrderAuthorization
from acme_ra_admin import tokens

from .conftest import AdminApp

ROUTES = [("GET", "/api/accounts"), ("GET", "/api/accounts/x"), ("POST", "/api/accounts/x/deactivate"),
          ("GET", "/api/eab-keys"), ("POST", "/api/eab-keys"), ("POST", "/api/eab-keys/x/revoke"),
          ("GET", "/api/orders"), ("GET", "/api/orders/x"), ("GET", "/api/certificates"),
          ("GET", "/api/certificates/x"), ("POST", "/api/certificates/x/revoke"), ("GET", "/api/upstream"),
          ("GET", "/api/queues")]


@pytest.mark.parametrize("header", [None, "Bearer acmera_wrong", "Bearer ", "Basic YWRtaW46YWRtaW4=", "acmera_x"])
async def test_every_route_refuses_a_missing_or_wrong_token_and_logs_it(
    admin_app: AdminApp, header: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in ROUTES:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="acme_ra_admin.gate"):
            response = await admin_app.client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        events = [r for r in caplog.records if r.getMessage() == "admin api: unauthorized request"]
        assert len(events) == 1, (method, path)
        assert events[0].path == path and events[0].reason in ("missing bearer token", "unknown or revoked token")  # type: ignore[attr-defined]
        assert "acmera_" not in caplog.text  # never the token


async def test_a_revoked_token_is_refused(admin_app: AdminApp) -> None:
    assert (await admin_app.client.get("/api/eab-keys", headers=admin_app.auth)).status_code == 200
    token_id = (await admin_app.ops.list_admin_tokens())[0].id
    await admin_app.ops.revoke_admin_token(token_id)
    assert (await admin_app.client.get("/api/eab-keys", headers=admin_app.auth)).status_code == 401


async def test_tokens_are_stored_hashed(admin_app: AdminApp) -> None:
    ops = admin_app.ops
    async with ops.db.transaction() as session:
        rows = await tokens.list_tokens(session)
    assert [row.token_sha256 for row in rows] == [tokens.token_sha256(admin_app.token)]
    assert admin_app.token not in repr([vars(row) for row in rows])


async def test_openapi_document_lists_the_resources(admin_app: AdminApp) -> None:
    document = (await admin_app.client.get("/api/openapi.json")).json()
    assert {"/api/accounts", "/api/eab-keys", "/api/orders", "/api/certificates", "/api/upstream",
            "/api/queues"} <= set(document["paths"])
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_eab_key_create_list_revoke(admin_app: AdminApp) -> None:
    client, auth = admin_app.client, admin_app.auth
    created = await client.post("/api/eab-keys", headers=auth, json={
        "label": "physics", "allow": [".physics.example.edu", "10.1.0.0/16"], "deny": ["www.physics.example.edu"],
        "wildcards": False, "profile": "tlsserver"})
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["kid"].startswith("kid-") and len(key["hmac_key"]) == 43
    assert key["policy"] == {"allow": [".physics.example.edu", "10.1.0.0/16"], "deny": ["www.physics.example.edu"],
                             "wildcards": False}
    listed = (await client.get("/api/eab-keys", headers=auth)).json()
    assert [k["kid"] for k in listed] == [key["kid"]] and "hmac_key" not in listed[0]
    assert listed[0]["status"] == "unused"
    revoked = await client.post(f"/api/eab-keys/{key['kid']}/revoke", headers=auth)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    again = await client.post(f"/api/eab-keys/{key['kid']}/revoke", headers=auth)
    assert again.status_code == 409
    assert (await client.post("/api/eab-keys/kid-nope/revoke", headers=auth)).status_code == 404


@pytest.mark.parametrize("body, message", [
    ({"profile": "nope"}, "is not one of ACME_RA_PROFILES"),
    ({"allow": ["10.0.0.0/33"]}, "bad policy rule"),
])
async def test_eab_key_with_a_bad_profile_or_rule_is_refused(admin_app: AdminApp, body: dict[str, object],
                                                             message: str) -> None:
    response = await admin_app.client.post("/api/eab-keys", headers=admin_app.auth, json=body)
    assert response.status_code == 400 and message in response.json()["detail"]


async def insert_order(admin_app: AdminApp) -> tuple[str, str]:
    """An account with one invalid order (a failed http-01 challenge) carrying a trace context."""
    ops = admin_app.ops
    now = dt.datetime.now(dt.UTC)
    async with ops.db.transaction() as session:
        account = Account(key_thumbprint="thumb-1", jwk={"kty": "EC"}, contact=["mailto:ops@example.org"])
        session.add(account)
        await session.flush()
        order = Order(account_id=account.id, provisioner="acme", status="invalid", expires=now + dt.timedelta(days=1),
                      identifiers=[{"type": "dns", "value": "www.example.org"}],
                      error={"type": "unauthorized", "detail": "no TXT record"},
                      trace_context="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        authz = Authorization(account_id=account.id, identifier_type="dns", identifier_value="www.example.org",
                              status="invalid", expires=now + dt.timedelta(days=1))
        session.add_all([order, authz])
        await session.flush()
        session.add(OrderAuthorization(order_id=order.id, authz_id=authz.id, position=0))
        session.add(Challenge(authz_id=authz.id, type="dns-01", status="invalid",
                              error={"type": "unauthorized", "detail": "no TXT record"}))
        pending = Order(account_id=account.id, provisioner="acme", status="pending", expires=now + dt.timedelta(days=1),
                        identifiers=[{"type": "dns", "value": "mail.example.org"}])
        session.add(pending)
    return account.id, order.id


async def test_orders_list_filters_and_show_with_authorizations_and_trace(admin_app: AdminApp) -> None:
    _account_id, order_id = await insert_order(admin_app)
    client, auth = admin_app.client, admin_app.auth
    everything = (await client.get("/api/orders", headers=auth)).json()
    assert len(everything) == 2
    invalid = (await client.get("/api/orders", params={"status": "invalid"}, headers=auth)).json()
    assert [o["id"] for o in invalid] == [order_id]
    assert (await client.get("/api/orders", params={"account": "other"}, headers=auth)).json() == []
    assert (await client.get("/api/orders", params={"status": "bogus"}, headers=auth)).status_code == 422
    detail = (await client.get(f"/api/orders/{order_id}", headers=auth)).json()
    assert detail["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert detail["trace_url"] == "http://jaeger.test/trace/4bf92f3577b34da6a3ce929d0e0e4736"
    assert detail["error"] == {"type": "unauthorized", "detail": "no TXT record"}
    assert detail["names"] == ["www.example.org"]
    [authz] = detail["authorizations"]
    assert authz["identifier"] == "dns:www.example.org" and authz["status"] == "invalid"
    assert authz["challenges"][0]["type"] == "dns-01" and authz["challenges"][0]["error"]["type"] == "unauthorized"
    assert (await client.get("/api/orders/nope", headers=auth)).status_code == 404


async def test_account_show_and_deactivate(admin_app: AdminApp) -> None:
    account_id, _ = await insert_order(admin_app)
    client, auth = admin_app.client, admin_app.auth
    shown = (await client.get(f"/api/accounts/{account_id}", headers=auth)).json()
    assert shown["status"] == "valid" and shown["orders"] == 2 and shown["contact"] == ["mailto:ops@example.org"]
    deactivated = await client.post(f"/api/accounts/{account_id}/deactivate", headers=auth)
    assert deactivated.status_code == 200 and deactivated.json()["status"] == "revoked"
    pending = (await client.get("/api/orders", params={"status": "pending"}, headers=auth)).json()
    assert pending == []  # its unfinished order went with it
    assert (await client.post(f"/api/accounts/{account_id}/deactivate", headers=auth)).status_code == 409
    assert [a["id"] for a in (await client.get("/api/accounts", params={"status": "revoked"}, headers=auth)).json()] == [account_id]


async def test_without_nats_revocation_and_queues_say_so(admin_app: AdminApp) -> None:
    client, auth = admin_app.client, admin_app.auth
    assert (await client.post("/api/certificates/nope/revoke", headers=auth, json={"reason": 1})).status_code == 404
    queues = (await client.get("/api/queues", headers=auth)).json()
    assert queues["reachable"] is False and "ACME_RA_NATS_URL" in queues["error"]
    upstream = (await client.get("/api/upstream", headers=auth)).json()
    assert upstream["signer"]["reachable"] is False and upstream["upstream"] == "lab"


async def test_health(admin_app: AdminApp) -> None:
    assert (await admin_app.client.get("/healthz")).json() == {"status": "ok"}
    assert (await admin_app.client.get("/readyz")).json() == {"status": "ready", "nats": "not configured"}
