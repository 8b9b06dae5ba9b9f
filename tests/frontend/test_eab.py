"""External Account Binding for acme-ra's own clients (RFC 8555 §7.3.4, conformance E1-E5)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from acme_ra.config import Settings
from acme_ra.eab import NewEabKey, create_key, revoke_key
from acme_ra_frontend.app import create_app
from tests.conformance.client import TestAcmeClient, b64
from tests.frontend.conftest import EXTERNAL_URL


@pytest.fixture(scope="module")
async def eab_http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"eab_required": True}))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=EXTERNAL_URL) as client):
        client.app = app  # type: ignore[attr-defined]
        yield client


@pytest.fixture
async def eab_client(eab_http: httpx.AsyncClient) -> TestAcmeClient:
    client = TestAcmeClient(eab_http, f"{EXTERNAL_URL}/acme/acme/directory")
    await client.load_directory()
    return client


async def new_eab_key(http: httpx.AsyncClient) -> NewEabKey:
    state = http.app.state.ra  # type: ignore[attr-defined]
    async with state.db.transaction() as session:
        return await create_key(session, state.sealer, label="test")


def binding(client: TestAcmeClient, kid: str, hmac_key: str, url: str | None = None, alg: str = "HS256") -> dict[str, str]:
    protected = b64(json.dumps({"alg": alg, "kid": kid, "url": url or client.directory["newAccount"]}).encode())
    payload = b64(json.dumps(client.key.public_key().to_partial_json()).encode())
    raw = base64.urlsafe_b64decode(hmac_key + "=" * (-len(hmac_key) % 4))
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    mac = hmac.new(raw, f"{protected}.{payload}".encode(), digest).digest()
    return {"protected": protected, "payload": payload, "signature": b64(mac)}


async def test_directory_advertises_eab(eab_client: TestAcmeClient) -> None:
    assert eab_client.directory["meta"]["externalAccountRequired"] is True


async def test_account_without_eab_is_refused(eab_client: TestAcmeClient) -> None:
    reply = await eab_client.register()
    assert reply.status == 403 and reply.problem_type == "externalAccountRequired"


async def test_account_with_eab_is_created_and_bound(eab_client: TestAcmeClient, eab_http: httpx.AsyncClient) -> None:
    key = await new_eab_key(eab_http)
    eab = binding(eab_client, key.kid, key.hmac_key)
    reply = await eab_client.register(externalAccountBinding=eab)
    assert reply.status == 201, reply.text
    assert reply.body["externalAccountBinding"] == eab
    # The same key cannot bind a second account.
    other = TestAcmeClient(eab_http, eab_client.directory_url)
    await other.load_directory()
    again = await other.register(externalAccountBinding=binding(other, key.kid, key.hmac_key))
    assert again.status == 403 and again.problem_type == "unauthorized"


@pytest.mark.parametrize("case", ["wrong-mac", "unknown-kid", "wrong-url", "other-key", "revoked", "nonce"])
async def test_bad_bindings_are_refused(case: str, eab_client: TestAcmeClient, eab_http: httpx.AsyncClient) -> None:
    key = await new_eab_key(eab_http)
    eab = binding(eab_client, key.kid, key.hmac_key)
    expected = {"wrong-mac": "unauthorized", "unknown-kid": "unauthorized", "wrong-url": "malformed",
                "other-key": "badPublicKey", "revoked": "unauthorized", "nonce": "malformed"}[case]
    if case == "wrong-mac":
        eab = binding(eab_client, key.kid, b64(b"k" * 32))
    elif case == "unknown-kid":
        eab = binding(eab_client, "kid-nope", key.hmac_key)
    elif case == "wrong-url":
        eab = binding(eab_client, key.kid, key.hmac_key, url=EXTERNAL_URL + "/elsewhere")
    elif case == "other-key":
        stranger = TestAcmeClient(eab_http, eab_client.directory_url)
        stranger.directory = eab_client.directory
        eab = binding(stranger, key.kid, key.hmac_key)
    elif case == "revoked":
        state = eab_http.app.state.ra  # type: ignore[attr-defined]
        async with state.db.transaction() as session:
            assert await revoke_key(session, key.kid)
    elif case == "nonce":
        header = json.loads(base64.urlsafe_b64decode(eab["protected"] + "=="))
        header["nonce"] = "abc"
        eab["protected"] = b64(json.dumps(header).encode())
    reply = await eab_client.register(externalAccountBinding=eab)
    assert reply.problem_type == expected, reply.text
