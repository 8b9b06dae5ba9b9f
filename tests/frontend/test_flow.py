"""The ACME API's main paths, driven through the real app with the tests' own JWS client."""

from __future__ import annotations

from tests.conformance.client import TestAcmeClient, b64, make_csr


async def test_directory_lists_resources(client: TestAcmeClient) -> None:
    directory = client.directory
    for name in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange"):
        assert directory[name].startswith("https://ra.test/acme/acme/")
    assert directory["meta"]["externalAccountRequired"] is False


async def test_new_nonce_head_and_get(client: TestAcmeClient) -> None:
    head = await client.http.head(client.directory["newNonce"])
    get = await client.http.get(client.directory["newNonce"])
    assert head.status_code == 200 and get.status_code == 204
    for response in (head, get):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["replay-nonce"]
        assert 'rel="index"' in response.headers["link"]
    assert head.headers["replay-nonce"] != get.headers["replay-nonce"]


async def test_new_account_then_existing(client: TestAcmeClient) -> None:
    created = await client.register(contact=["mailto:a@example.org"])
    assert created.status == 201
    assert created.body["status"] == "valid"
    assert created.body["orders"].startswith("https://ra.test/acme/acme/account/")
    again = await client.post(client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True)
    assert again.status == 200
    assert again.location == created.location


async def test_only_return_existing_unknown_key(client: TestAcmeClient) -> None:
    reply = await client.post(client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True)
    assert reply.status == 400
    assert reply.problem_type == "accountDoesNotExist"
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.headers["replay-nonce"]


async def test_reused_nonce_is_bad_nonce(account: TestAcmeClient) -> None:
    nonce = await account.nonce()
    url = account.kid
    assert url
    first = await account.post_raw(url, account.sign(url, "", nonce))
    second = await account.post_raw(url, account.sign(url, "", nonce))
    assert first.status == 200
    assert second.status == 400 and second.problem_type == "badNonce"


async def test_forged_nonce_is_bad_nonce(account: TestAcmeClient) -> None:
    url = account.kid
    assert url
    reply = await account.post_raw(url, account.sign(url, "", b64(b"x" * 32)))
    assert reply.problem_type == "badNonce"


async def test_wrong_url_is_unauthorized(account: TestAcmeClient) -> None:
    assert account.kid
    reply = await account.post_raw(
        account.kid, account.sign("https://ra.test/acme/acme/new-order", "", await account.nonce())
    )
    assert reply.status == 403 and reply.problem_type == "unauthorized"


async def test_get_on_post_resource_is_405(account: TestAcmeClient) -> None:
    assert account.kid
    response = await account.http.get(account.kid)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["allow"] == "POST"


async def test_wrong_content_type_is_415(account: TestAcmeClient) -> None:
    assert account.kid
    reply = await account.post_raw(account.kid, account.sign(account.kid, "", await account.nonce()), "application/json")
    assert reply.status == 415


async def test_garbage_bodies_give_problems(account: TestAcmeClient) -> None:
    assert account.kid
    for body in (b"", b"[]", b"{", b'{"protected":1,"payload":"","signature":""}', b"\xff" * 100):
        reply = await account.post_raw(account.kid, body)
        assert 400 <= reply.status < 500, (body, reply.text)
        assert reply.headers["content-type"] == "application/problem+json"


async def test_new_order_and_rejections(account: TestAcmeClient) -> None:
    reply = await account.post(
        account.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": "www.Example.org"}, {"type": "dns", "value": "*.example.org"}]},
    )
    assert reply.status == 201, reply.text
    order = reply.body
    assert order["status"] == "pending"
    assert order["identifiers"] == [
        {"type": "dns", "value": "www.example.org"},
        {"type": "dns", "value": "*.example.org"},
    ]
    assert len(order["authorizations"]) == 2
    wildcard = await account.post(order["authorizations"][1])
    assert wildcard.body["wildcard"] is True
    assert wildcard.body["identifier"] == {"type": "dns", "value": "example.org"}
    assert [c["type"] for c in wildcard.body["challenges"]] == ["dns-01"]
    plain = await account.post(order["authorizations"][0])
    assert "wildcard" not in plain.body
    assert sorted(c["type"] for c in plain.body["challenges"]) == ["dns-01", "http-01", "tls-alpn-01"]

    bad = await account.post(
        account.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": "a..b"}, {"type": "dns", "value": "1.2.3.4"}]},
    )
    assert bad.status == 400 and bad.problem_type == "rejectedIdentifier"
    assert len(bad.body["subproblems"]) == 2
    assert all("identifier" in sub for sub in bad.body["subproblems"])
    unsupported = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "email", "value": "x"}]})
    assert unsupported.problem_type == "unsupportedIdentifier"
    empty = await account.post(account.directory["newOrder"], {"identifiers": []})
    assert empty.problem_type == "malformed"


async def test_finalize_before_ready_is_order_not_ready(account: TestAcmeClient) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "x.example.org"}]})
    csr, _ = make_csr(["x.example.org"])
    finalize = await account.post(reply.body["finalize"], {"csr": b64(csr)})
    assert finalize.status == 403 and finalize.problem_type == "orderNotReady"


async def test_other_account_cannot_read_order(account: TestAcmeClient, http: object) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "y.example.org"}]})
    other = TestAcmeClient(account.http, account.directory_url)
    await other.load_directory()
    await other.register()
    peek = await other.post(reply.location or "")
    assert peek.status == 403 and peek.problem_type == "unauthorized"


async def test_account_deactivation(client: TestAcmeClient) -> None:
    await client.register()
    assert client.kid
    reply = await client.post(client.kid, {"status": "deactivated"})
    assert reply.status == 200 and reply.body["status"] == "deactivated"
    after = await client.post(client.kid)
    assert after.status == 401 and after.problem_type == "unauthorized"


async def test_contact_validation(client: TestAcmeClient) -> None:
    reply = await client.register(contact=["tel:+1555"])
    assert reply.problem_type == "unsupportedContact"
    reply = await client.register(contact=["mailto:not an address"])
    assert reply.problem_type == "invalidContact"


async def test_unknown_provisioner_is_404(client: TestAcmeClient) -> None:
    response = await client.http.get("https://ra.test/acme/nope/directory")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_key_change_rolls_the_account_key(account: TestAcmeClient) -> None:
    import json

    from tests.conformance.client import alg_for, new_key

    assert account.kid
    url = account.directory["keyChange"]
    new = new_key("ec384")
    inner_protected = b64(json.dumps({"alg": alg_for(new).name, "jwk": new.public_key().to_partial_json(), "url": url}).encode())
    inner_payload = b64(json.dumps({"account": account.kid, "oldKey": account.key.public_key().to_partial_json()}).encode())
    signature = alg_for(new).sign(new.key, f"{inner_protected}.{inner_payload}".encode())
    inner = {"protected": inner_protected, "payload": inner_payload, "signature": b64(signature)}
    reply = await account.post(url, inner)
    assert reply.status == 200, reply.text
    stale = await account.post(account.kid)
    # The old key (P-256) no longer matches the account key (P-384).
    assert stale.status == 400 and stale.problem_type in ("malformed", "badSignatureAlgorithm")
    account.key = new
    fresh = await account.post(account.kid)
    assert fresh.status == 200
    assert fresh.body["key"] == new.public_key().to_partial_json()


async def test_reconciler_republishes_stuck_challenge(account: TestAcmeClient, http: object) -> None:
    import datetime as dt

    from sqlalchemy import select, update

    from acme_ra import bus
    from acme_ra.db.models import Challenge
    from acme_ra_frontend.reconciler import reconcile_once

    order = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "stuck.example.org"}]})
    authz = await account.post(order.body["authorizations"][0])
    challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
    reply = await account.post(challenge["url"], {})
    assert reply.body["status"] == "processing"
    state = account.http.app.state.ra  # type: ignore[attr-defined]
    challenge_id = challenge["url"].rsplit("/", 1)[1]
    subscription = await state.js.pull_subscribe(bus.SUBJECT_VALIDATE, durable=bus.DURABLE_VALIDATOR, stream=bus.JOBS_STREAM)
    try:
        # The job was lost: taken and acked without an outcome (a queue with jobs still waiting
        # their turn is left alone by the reconciler).
        while True:
            try:
                waiting = await subscription.fetch(500, timeout=0.5)
            except TimeoutError:
                break
            for message in waiting:
                await message.ack()
        async with state.db.transaction() as session:
            await session.execute(
                update(Challenge).where(Challenge.id == challenge_id).values(
                    updated_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
                )
            )
        # The app's own reconciler (every 15 s) may take this pass first: either way the job is
        # published once more and counted once.
        await reconcile_once(state)
        async with state.db.transaction() as session:
            republished = (await session.execute(select(Challenge.republished).where(Challenge.id == challenge_id))).scalar_one()
        assert republished == 1
        seen = set()
        for message in await subscription.fetch(50, timeout=2):
            seen.add(bus.ValidateJob.model_validate_json(message.data).challenge_id)
        assert challenge_id in seen
    finally:
        # Left subscribed, the app's drain at the session's end waits for its unread
        # messages until nats-py's drain timeout (30 s).
        await subscription.unsubscribe()


async def test_ip_identifiers(account: TestAcmeClient) -> None:
    reply = await account.post(
        account.directory["newOrder"],
        {"identifiers": [{"type": "ip", "value": "192.0.2.1"}, {"type": "ip", "value": "2001:DB8:0::1"}]},
    )
    assert reply.status == 201, reply.text
    assert reply.body["identifiers"] == [{"type": "ip", "value": "192.0.2.1"}, {"type": "ip", "value": "2001:db8::1"}]
    for url in reply.body["authorizations"]:
        authz = await account.post(url)
        assert authz.body["identifier"]["type"] == "ip"
        assert "dns-01" not in [c["type"] for c in authz.body["challenges"]]
    bad = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "ip", "value": "10.0.0.0/8"}]})
    assert bad.status == 400 and bad.problem_type == "malformed"


async def test_post_to_directory_is_405_with_get_allowed(client: TestAcmeClient) -> None:
    response = await client.http.post(client.directory_url, content=b"{}")
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]
    assert response.headers["content-type"] == "application/problem+json"


async def test_metrics_use_route_templates(account: TestAcmeClient) -> None:
    from prometheus_client import REGISTRY, generate_latest

    from acme_ra_frontend.metrics import refresh_once

    await refresh_once(account.http.app.state.ra)  # type: ignore[attr-defined]
    page = generate_latest(REGISTRY).decode()
    assert 'acme_ra_http_requests_total{method="POST",route="/acme/{provisioner}/new-account",status="201"}' in page
    assert "acme_ra_nonces_redeemed" in page and 'acme_ra_jobs_pending{consumer="validator"}' in page
    assert account.kid and account.kid.rsplit("/", 1)[1] not in page  # no ids as labels


async def test_health_and_readiness(http: object) -> None:
    client = http  # the in-process app
    healthz = await client.get("/healthz")  # type: ignore[attr-defined]
    readyz = await client.get("/readyz")  # type: ignore[attr-defined]
    assert healthz.status_code == 200
    assert readyz.status_code == 200 and readyz.json()["checks"] == {"database": "ok", "nats": "ok"}
    assert "replay-nonce" not in readyz.headers
