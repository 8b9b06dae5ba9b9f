"""Checklist lines the frontend answers outside the JWS flow, or with other settings: terms of
service and their change (A5), the directory's POST-as-GET and GET-only resources (G1, T7),
renewalInfo's certIDs (X1, X2) and `replaces` of another account's certificate (X5)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import update

from acme_ra.config import Settings
from acme_ra.db.models import Account
from acme_ra_frontend.app import create_app
from tests.conformance.client import TestAcmeClient, b64
from tests.frontend.conftest import EXTERNAL_URL
from tests.frontend.test_policy_profiles_ari import issued_order

TERMS_V1 = "https://ra.test/terms/v1.pdf"
TERMS_V2 = "https://ra.test/terms/v2.pdf"


@pytest.fixture(scope="module")
async def terms_http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"terms_of_service_url": TERMS_V1}))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=EXTERNAL_URL) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


def set_terms(http: httpx.AsyncClient, url: str) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    state.settings = state.settings.model_copy(update={"terms_of_service_url": url})


async def terms_client(http: httpx.AsyncClient) -> TestAcmeClient:
    client = TestAcmeClient(http, f"{EXTERNAL_URL}/acme/acme/directory")
    await client.load_directory()
    return client


def new_order_of(name: str) -> dict[str, object]:
    return {"identifiers": [{"type": "dns", "value": name}]}


# A5: terms of service ---------------------------------------------------------------------------

async def test_a5_d2_terms_advertised_and_agreement_required(terms_http: httpx.AsyncClient) -> None:
    set_terms(terms_http, TERMS_V1)
    client = await terms_client(terms_http)
    assert client.directory["meta"]["termsOfService"] == TERMS_V1
    refused = await client.post(client.directory["newAccount"], {"contact": []}, use_jwk=True)
    assert refused.status == 400 and refused.problem_type == "malformed" and TERMS_V1 in refused.body["detail"]
    created = await client.register()
    assert created.status == 201 and created.body["termsOfServiceAgreed"] is True


async def test_a5_changed_terms_need_agreement_again(terms_http: httpx.AsyncClient) -> None:
    set_terms(terms_http, TERMS_V1)
    client = await terms_client(terms_http)
    await client.register()
    assert client.kid
    assert (await client.post(client.directory["newOrder"], new_order_of("tos1.example.org"))).status == 201
    set_terms(terms_http, TERMS_V2)
    try:
        blocked = await client.post(client.directory["newOrder"], new_order_of("tos2.example.org"))
        assert blocked.status == 403 and blocked.problem_type == "userActionRequired"
        assert f'<{TERMS_V2}>;rel="terms-of-service"' in blocked.headers.get_list("link")
        instance = blocked.body["instance"]
        assert instance.startswith(f"{EXTERNAL_URL}/acme/acme/terms/")
        # The account itself stays open (read, update, deactivate), and an update cannot agree:
        # RFC 8555 §7.3.2 says the server MUST ignore termsOfServiceAgreed there.
        assert (await client.post(client.kid)).status == 200
        await client.post(client.kid, {"termsOfServiceAgreed": True})
        assert (await client.post(client.directory["newOrder"], new_order_of("tos2.example.org"))).status == 403
        # A person agrees on the instance page.
        page = await terms_http.get(instance)
        assert page.status_code == 200 and TERMS_V2 in page.text and "<form" in page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        forged = instance[:-4] + ("0000" if not instance.endswith("0000") else "1111")
        assert (await terms_http.post(forged)).status_code == 404
        assert (await terms_http.post(instance)).status_code == 200
        assert (await client.post(client.directory["newOrder"], new_order_of("tos2.example.org"))).status == 201
        # The link of the old terms agrees to nothing once they change again.
        set_terms(terms_http, TERMS_V1 + "?v3")
        assert (await terms_http.get(instance)).status_code == 404
    finally:
        set_terms(terms_http, TERMS_V1)


async def test_a5_a_non_ascii_agreement_token_is_not_found(terms_http: httpx.AsyncClient) -> None:
    set_terms(terms_http, TERMS_V1)
    for token in ("%C3%A9" * 18, "%00" * 36, "x"):
        reply = await terms_http.get(f"{EXTERNAL_URL}/acme/acme/terms/some-account/{token}")
        assert (reply.status_code, reply.json()["type"]) == (404, "urn:ietf:params:acme:error:malformed"), reply.text


async def test_a5_accounts_from_before_the_record_count_as_agreed(terms_http: httpx.AsyncClient) -> None:
    set_terms(terms_http, TERMS_V1)
    client = await terms_client(terms_http)
    await client.register()
    assert client.kid
    state = terms_http.app.state.ra  # type: ignore[attr-defined]
    async with state.db.transaction() as session:  # as an account registered before schema 0006
        await session.execute(update(Account).where(Account.id == client.kid.rsplit("/", 1)[1]).values(tos_agreed_url=None))
    assert (await client.post(client.directory["newOrder"], new_order_of("old.example.org"))).status == 201
    set_terms(terms_http, TERMS_V2)
    try:
        assert (await client.post(client.directory["newOrder"], new_order_of("old.example.org"))).status == 403
    finally:
        set_terms(terms_http, TERMS_V1)


# G1 / T7: the directory and GET-only resources ---------------------------------------------------

async def test_g1_post_as_get_of_the_directory(account: TestAcmeClient) -> None:
    reply = await account.post(account.directory_url)
    assert reply.status == 200 and reply.body == account.directory
    assert reply.headers["replay-nonce"]
    update_attempt = await account.post(account.directory_url, {})
    assert update_attempt.status == 400 and update_attempt.problem_type == "malformed"


async def test_t7_head_and_post_on_renewal_info(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    cert_id, _pem = await issued_order(account, http, "head-ari.example.org")
    url = f"{account.directory['renewalInfo']}/{cert_id}"
    head = await http.head(url)
    assert head.status_code == 200 and head.content == b""
    for response in (await http.post(url, content=b"{}"),
                     await account.http.post(url, content=account.sign(url, "", await account.nonce()),
                                             headers={"Content-Type": "application/jose+json"})):
        assert response.status_code == 405 and response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:ietf:params:acme:error:malformed"
        assert response.headers["allow"] == "GET, HEAD"


# X1 / X2 / X5: renewalInfo and replaces ----------------------------------------------------------

async def test_x1_x2_cert_ids_malformed_unknown_issuer_unknown_serial(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    cert_id, _pem = await issued_order(account, http, "x2.example.org")
    base = account.directory["renewalInfo"]
    aki, serial = cert_id.split(".")
    assert (await http.get(f"{base}/{cert_id}")).status_code == 200
    assert (await http.get(f"{base}/{cert_id}/")).status_code == 200
    malformed = [f"{aki}=.{serial}", f"{aki}.{serial}=", aki, f"{aki}.", f".{serial}", f"{aki}.{serial}.x",
                 f"{aki}.AAE"]  # a serial with a needless leading zero is not DER
    for bad in malformed:
        response = await http.get(f"{base}/{bad}")
        assert response.status_code == 400 and response.json()["type"].endswith(":malformed"), bad
    unknown_issuer = await http.get(f"{base}/{b64(b'not an issuer')}.{serial}")
    assert unknown_issuer.status_code == 400 and "issuer" in unknown_issuer.json()["detail"]
    other_serial = b64(bytes([1, 2, 3]))
    unknown_serial = await http.get(f"{base}/{aki}.{other_serial}")
    assert unknown_serial.status_code == 404 and unknown_serial.json()["type"].endswith(":malformed")
    assert (await http.get(base)).status_code == 400


async def test_x5_replaces_another_accounts_certificate(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    cert_id, _pem = await issued_order(account, http, "x5.example.org")
    other = TestAcmeClient(account.http, account.directory_url)
    await other.load_directory()
    await other.register()
    reply = await other.post(other.directory["newOrder"], {**new_order_of("x5.example.org"), "replaces": cert_id})
    assert reply.status == 403 and reply.problem_type == "unauthorized"
