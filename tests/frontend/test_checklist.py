"""The conformance checklist (../shared/reference/acme-conformance.md), line by line, for what the
frontend decides on its own. Each test names the checklist lines it covers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
from pathlib import Path

import httpx
import josepy
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import update

from acme_ra import blocked_keys
from acme_ra.db.lifecycle import record_challenge_outcome, store_certificate
from acme_ra.db.models import Challenge, Order
from tests.conformance.client import TestAcmeClient, alg_for, b64, make_csr, new_key
from tests.frontend.test_policy_profiles_ari import issue_test_certificate, issued_order


def jose(body: bytes | str) -> dict[str, str]:
    return {"Content-Type": "application/jose+json"}


async def raw_post(account: TestAcmeClient, url: str, body: bytes) -> httpx.Response:
    return await account.http.post(url, content=body, headers=jose(body))


def problem(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return str(response.json()["type"]).removeprefix("urn:ietf:params:acme:error:")


# 3.1 Transport ----------------------------------------------------------------------------------

async def test_t2_t6_link_index_and_cors_on_post_responses(account: TestAcmeClient) -> None:
    assert account.kid
    reply = await account.post(account.kid)
    assert '<https://ra.test/acme/acme/directory>;rel="index"' in reply.headers["link"]
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "Replay-Nonce" in reply.headers["access-control-expose-headers"]
    assert reply.headers["content-type"] == "application/json"


async def test_t4_padded_base64url_is_malformed(account: TestAcmeClient) -> None:
    assert account.kid
    body = json.loads(account.sign(account.kid, "", await account.nonce()))
    body["protected"] += "=" * (-len(body["protected"]) % 4 or 4)
    response = await raw_post(account, account.kid, json.dumps(body).encode())
    assert response.status_code == 400 and problem(response) == "malformed"


async def test_t7_head_on_directory(client: TestAcmeClient) -> None:
    response = await client.http.head(client.directory_url)
    assert response.status_code == 200


async def test_t8_unknown_resources_are_404(account: TestAcmeClient) -> None:
    for path in ("order/nope", "authz/nope", "certificate/nope", "challenge/nope/nope"):
        reply = await account.post(f"https://ra.test/acme/acme/{path}")
        assert reply.status == 404 and reply.problem_type == "malformed", path


async def test_t9_body_size_cap(account: TestAcmeClient) -> None:
    response = await raw_post(account, account.directory["newOrder"], b"{" + b" " * 60_000 + b"}")
    assert response.status_code == 413 and problem(response) == "malformed"


# 3.2 JWS ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["general", "compact", "unprotected-header", "empty-signature", "b64-false", "extra-member"])
async def test_j2_only_flattened_serialization(account: TestAcmeClient, variant: str) -> None:
    assert account.kid
    body = json.loads(account.sign(account.kid, "", await account.nonce()))
    if variant == "general":
        body = {"payload": body["payload"], "signatures": [{"protected": body["protected"], "signature": body["signature"]}]}
    elif variant == "compact":
        body = f'{body["protected"]}.{body["payload"]}.{body["signature"]}'
    elif variant == "unprotected-header":
        body["header"] = {"kid": account.kid}
    elif variant == "empty-signature":
        body["signature"] = ""
    elif variant == "b64-false":
        header = json.loads(b64decode(body["protected"]))
        body["protected"] = b64(json.dumps({**header, "b64": False, "crit": ["b64"]}).encode())
    else:
        body["extra"] = 1
    response = await raw_post(account, account.kid, json.dumps(body).encode())
    assert response.status_code == 400 and problem(response) == "malformed", response.text


def b64decode(value: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


async def test_j3_jwk_and_kid_together_is_malformed(account: TestAcmeClient) -> None:
    assert account.kid
    body = account.sign(account.kid, "", await account.nonce(), header_overrides={"jwk": account.key.public_key().to_partial_json()})
    response = await raw_post(account, account.kid, body)
    assert problem(response) == "malformed"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", "PS256"])
async def test_j4_unsupported_algorithms(account: TestAcmeClient, alg: str) -> None:
    assert account.kid
    body = account.sign(account.kid, "", await account.nonce(), header_overrides={"alg": alg})
    response = await raw_post(account, account.kid, body)
    assert response.status_code == 400 and problem(response) == "badSignatureAlgorithm"
    assert "ES256" in response.json()["algorithms"]


async def test_j4_alg_must_match_the_key(client: TestAcmeClient) -> None:
    body = client.sign(client.directory["newAccount"], {}, await client.nonce(), use_jwk=True, header_overrides={"alg": "ES384"})
    assert problem(await raw_post(client, client.directory["newAccount"], body)) == "badSignatureAlgorithm"


async def test_j5_weak_account_key_is_bad_public_key(client: TestAcmeClient) -> None:
    weak = josepy.JWKRSA(key=rsa.generate_private_key(65537, 1024))
    reply = await client.post(client.directory["newAccount"], {"termsOfServiceAgreed": True}, use_jwk=True, key=weak)
    assert reply.status == 400 and reply.problem_type == "badPublicKey"


async def test_j6_jwk_where_kid_is_required_and_back(account: TestAcmeClient) -> None:
    jwk_signed = await account.post(account.directory["newOrder"], {"identifiers": []}, use_jwk=True)
    assert jwk_signed.problem_type == "malformed"
    body = account.sign(account.directory["newAccount"], {}, await account.nonce())  # kid
    assert problem(await raw_post(account, account.directory["newAccount"], body)) == "malformed"


async def test_j7_unknown_kid_is_account_does_not_exist(account: TestAcmeClient) -> None:
    body = account.sign(account.directory["newOrder"], {}, await account.nonce(),
                        header_overrides={"kid": "https://ra.test/acme/acme/account/unknown"})
    response = await raw_post(account, account.directory["newOrder"], body)
    assert response.status_code == 400 and problem(response) == "accountDoesNotExist"


async def test_j8_bad_signature_and_non_json_payload(account: TestAcmeClient) -> None:
    assert account.kid
    body = json.loads(account.sign(account.kid, "", await account.nonce()))
    body["signature"] = b64(b"\x00" * 64)
    assert problem(await raw_post(account, account.kid, json.dumps(body).encode())) == "malformed"
    body = json.loads(account.sign(account.kid, "", await account.nonce()))
    protected, signature_input_payload = body["protected"], b64(b"not json")
    alg = alg_for(account.key)
    body = {"protected": protected, "payload": signature_input_payload,
            "signature": b64(alg.sign(account.key.key, f"{protected}.{signature_input_payload}".encode()))}
    assert problem(await raw_post(account, account.kid, json.dumps(body).encode())) == "malformed"


async def test_j9_missing_url_is_malformed(account: TestAcmeClient) -> None:
    assert account.kid
    body = account.sign(account.kid, "", await account.nonce(), header_overrides={"url": None})
    assert problem(await raw_post(account, account.kid, body)) == "malformed"


async def test_j10_a4_unknown_fields_and_resource_are_ignored_not_reflected(client: TestAcmeClient) -> None:
    reply = await client.register(resource="new-reg", somethingNew={"x": 1}, orders="https://evil", status="deactivated")
    assert reply.status == 201, reply.text
    assert "resource" not in reply.body and "somethingNew" not in reply.body
    assert reply.body["status"] == "valid" and reply.body["orders"].startswith("https://ra.test/")


# 3.3 Nonces -------------------------------------------------------------------------------------

async def test_n1_post_as_get_new_nonce(account: TestAcmeClient) -> None:
    reply = await account.post(account.directory["newNonce"])
    assert reply.status == 200 and reply.headers["replay-nonce"]


async def test_n2_n3_bad_nonce_carries_a_nonce_that_works(account: TestAcmeClient) -> None:
    assert account.kid
    for bad in (None, "", "!!!", b64(b"short")):
        body = account.sign(account.kid, "", bad, header_overrides={} if bad is not None else None)
        response = await raw_post(account, account.kid, body)
        assert response.status_code == 400 and problem(response) == "badNonce", bad
        fresh = response.headers["replay-nonce"]
        retry = await raw_post(account, account.kid, account.sign(account.kid, "", fresh))
        assert retry.status_code == 200


async def test_n3_expired_nonce(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    import hashlib
    import hmac
    import struct

    assert account.kid
    nonces = http.app.state.ra.nonces  # type: ignore[attr-defined]
    head = struct.pack(">Q", int((dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)).timestamp() * 1000)) + b"\x01" * 8
    old = b64(head + hmac.new(nonces._key, head, hashlib.sha256).digest()[:16])
    response = await raw_post(account, account.kid, account.sign(account.kid, "", old))
    assert problem(response) == "badNonce" and "expired" in response.json()["detail"]


async def test_n6_bad_signature_does_not_burn_the_nonce(account: TestAcmeClient) -> None:
    assert account.kid
    nonce = await account.nonce()
    forged = account.sign(account.kid, "", nonce, key=new_key())
    assert problem(await raw_post(account, account.kid, forged)) == "malformed"
    good = await raw_post(account, account.kid, account.sign(account.kid, "", nonce))
    assert good.status_code == 200


# 3.4 / 3.6 Accounts -----------------------------------------------------------------------------

async def test_g3_a7_empty_object_is_an_update_and_contact_changes(account: TestAcmeClient) -> None:
    assert account.kid
    unchanged = await account.post(account.kid, {})
    assert unchanged.status == 200 and unchanged.body["contact"] == ["mailto:admin@example.org"]
    updated = await account.post(account.kid, {"contact": ["mailto:new@example.org"], "orders": "x", "termsOfServiceAgreed": False})
    assert updated.body["contact"] == ["mailto:new@example.org"]
    assert updated.body["orders"].startswith("https://ra.test/")


async def test_a6_contact_hfields_and_several_addresses(client: TestAcmeClient) -> None:
    for contact in ("mailto:a@example.org?subject=x", "mailto:a@example.org,b@example.org"):
        reply = await client.register(contact=[contact])
        assert reply.problem_type == "invalidContact", contact


async def test_a8_account_url_must_match_kid(account: TestAcmeClient) -> None:
    other = TestAcmeClient(account.http, account.directory_url)
    await other.load_directory()
    await other.register()
    assert other.kid
    reply = await account.post(other.kid)
    assert reply.status == 403 and reply.problem_type == "unauthorized"


async def test_a9_deactivated_key_cannot_register_again(client: TestAcmeClient) -> None:
    await client.register()
    assert client.kid
    await client.post(client.kid, {"status": "deactivated"})
    again = await client.post(client.directory["newAccount"], {"termsOfServiceAgreed": True}, use_jwk=True)
    assert again.status == 401 and again.problem_type == "unauthorized"


async def test_a10_orders_list_paginates(account: TestAcmeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from acme_ra_frontend import accounts

    monkeypatch.setattr(accounts, "ORDERS_PAGE_SIZE", 2)
    for n in range(3):
        await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": f"page{n}.example.org"}]})
    assert account.kid
    first = await account.post(account.kid + "/orders")
    assert len(first.body["orders"]) == 2
    next_url = first.headers["link"].split(";rel=\"next\"")[0].split("<")[-1].rstrip(">")
    second = await account.post(next_url)
    assert second.status == 200 and second.body["orders"] and not set(second.body["orders"]) & set(first.body["orders"])


# 3.8 Key rollover -------------------------------------------------------------------------------

def inner_jws(new: josepy.JWK, url: str, payload: dict[str, object], extra: dict[str, object] | None = None) -> dict[str, str]:
    header = {"alg": alg_for(new).name, "jwk": new.public_key().to_partial_json(), "url": url, **(extra or {})}
    protected, body = b64(json.dumps(header).encode()), b64(json.dumps(payload).encode())
    return {"protected": protected, "payload": body, "signature": b64(alg_for(new).sign(new.key, f"{protected}.{body}".encode()))}


async def test_k2_k3_key_change_refusals_and_conflict(account: TestAcmeClient) -> None:
    assert account.kid
    url = account.directory["keyChange"]
    old = account.key.public_key().to_partial_json()
    new = new_key()
    cases = [
        (inner_jws(new, url + "x", {"account": account.kid, "oldKey": old}), "malformed"),
        (inner_jws(new, url, {"account": account.kid + "x", "oldKey": old}), "malformed"),
        (inner_jws(new, url, {"account": account.kid, "oldKey": new_key().public_key().to_partial_json()}), "unauthorized"),
        (inner_jws(new, url, {"account": account.kid, "oldKey": old}, {"nonce": "abc"}), "malformed"),
    ]
    for inner, expected in cases:
        reply = await account.post(url, inner)
        assert reply.problem_type == expected, reply.text
    other = TestAcmeClient(account.http, account.directory_url)
    await other.load_directory()
    await other.register()
    taken = await account.post(url, inner_jws(other.key, url, {"account": account.kid, "oldKey": old}))
    assert taken.status == 409 and taken.location == other.kid


# 3.9 / 3.10 Orders, authorizations, challenges ----------------------------------------------------

@pytest.mark.parametrize("value", ["example.org.", "*.*.example.org", "a*.example.org", "x." + "a" * 64 + ".org",
                                   "xn--zz.example.org", "under_score.example.org", "*.org",
                                   ".".join(["a" * 63] * 4)])
async def test_o3_bad_dns_names(account: TestAcmeClient, value: str) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": value}]})
    assert reply.status == 400 and reply.problem_type == "rejectedIdentifier", value
    assert reply.body["subproblems"][0]["identifier"]["value"] == value


async def test_o1_o3_z1_z2_order_and_authorization_objects(account: TestAcmeClient) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [
        {"type": "dns", "value": "Obj.Example.ORG"}, {"type": "dns", "value": "obj.example.org"}]})
    order = reply.body
    assert order["identifiers"] == [{"type": "dns", "value": "obj.example.org"}]
    assert order["expires"].endswith("Z") and order["finalize"].endswith("/finalize")
    authz = (await account.post(order["authorizations"][0])).body
    assert authz["status"] == "pending" and authz["expires"].endswith("Z")
    for challenge in authz["challenges"]:
        assert len(challenge["token"]) >= 22 and "=" not in challenge["token"]
        assert challenge["status"] == "pending" and "validated" not in challenge and "error" not in challenge


async def test_o1_not_before_is_refused(account: TestAcmeClient) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "nb.example.org"}],
                                                               "notBefore": "2030-01-01T00:00:00Z"})
    assert reply.problem_type == "malformed"


async def ready_order(account: TestAcmeClient, http: httpx.AsyncClient, names: list[str]) -> dict[str, object]:
    """An order whose authorizations were validated (as the validator would record it)."""
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": n} for n in names]})
    state = http.app.state.ra  # type: ignore[attr-defined]
    for url in reply.body["authorizations"]:
        authz = await account.post(url)
        challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
        posted = await account.post(challenge["url"], {})
        assert posted.body["status"] == "processing"
        async with state.db.transaction() as session:
            await record_challenge_outcome(session, challenge["url"].rsplit("/", 1)[1], None, dt.timedelta(days=30))
    order = await account.post(reply.location or "")
    assert order.body["status"] == "ready", order.text
    return {"url": reply.location, **order.body}


async def test_z3_z5_challenge_response_links_up_and_retries(account: TestAcmeClient) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "z3.example.org"}]})
    authz_url = reply.body["authorizations"][0]
    authz = await account.post(authz_url)
    challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
    posted = await account.post(challenge["url"], {"unknownField": True})
    assert posted.status == 200 and posted.body["status"] == "processing"
    assert f'<{authz_url}>;rel="up"' in posted.headers["link"]
    assert int(posted.headers["retry-after"]) >= 1
    polled = await account.post(authz_url)
    assert polled.body["status"] == "pending" and "retry-after" in polled.headers
    second = await account.post(challenge["url"], {})  # already processing: same state, no new job
    assert second.body["status"] == "processing"


async def test_o4_valid_authorizations_are_reused(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    first = await ready_order(account, http, ["reuse.example.org"])
    again = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "reuse.example.org"}]})
    assert again.body["status"] == "ready"
    assert again.body["authorizations"] == first["authorizations"]


async def test_z7_authorization_deactivation_invalidates_the_order(account: TestAcmeClient) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "z7.example.org"}]})
    authz_url = reply.body["authorizations"][0]
    deactivated = await account.post(authz_url, {"status": "deactivated"})
    assert deactivated.status == 200 and deactivated.body["status"] == "deactivated"
    order = await account.post(reply.location or "")
    assert order.body["status"] == "invalid" and "error" in order.body
    again = await account.post(authz_url, {"status": "deactivated"})
    assert again.problem_type == "malformed"


async def test_g4_other_accounts_resources_are_unauthorized(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    order = await ready_order(account, http, ["g4.example.org"])
    other = TestAcmeClient(account.http, account.directory_url)
    await other.load_directory()
    await other.register()
    authz_url = order["authorizations"][0]  # type: ignore[index]
    assert (await other.post(authz_url)).problem_type == "unauthorized"
    authz = await account.post(authz_url)
    assert (await other.post(authz.body["challenges"][0]["url"])).problem_type == "unauthorized"


async def test_o6_expired_order_is_invalid(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "o6.example.org"}]})
    state = http.app.state.ra  # type: ignore[attr-defined]
    async with state.db.transaction() as session:
        await session.execute(update(Order).where(Order.id == (reply.location or "").rsplit("/", 1)[1])
                              .values(expires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    order = await account.post(reply.location or "")
    assert order.body["status"] == "invalid"
    csr, _ = make_csr(["o6.example.org"])
    assert (await account.post(reply.body["finalize"], {"csr": b64(csr)})).problem_type == "orderNotReady"


# 3.12 Finalize ----------------------------------------------------------------------------------

async def test_f2_f3_f5_f7_bad_csrs_leave_the_order_ready(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    order = await ready_order(account, http, ["f.example.org", "www.f.example.org"])
    finalize = str(order["finalize"])
    weak = rsa.generate_private_key(65537, 1024)
    bad = {
        "missing name": b64(make_csr(["f.example.org"])[0]),
        "extra name": b64(make_csr(["f.example.org", "www.f.example.org", "x.example.org"])[0]),
        "cn not a san": b64(make_csr(["f.example.org", "www.f.example.org"], cn="other.example.org")[0]),
        "account key": b64(make_csr(["f.example.org", "www.f.example.org"], key=account.key.key._wrapped)[0]),
        "weak key": b64(make_csr(["f.example.org", "www.f.example.org"], key=weak)[0]),
        "not der": b64(b"-----BEGIN CERTIFICATE REQUEST-----"),
    }
    for case, csr in bad.items():
        reply = await account.post(finalize, {"csr": csr})
        assert reply.status == 400 and reply.problem_type == "badCSR", (case, reply.text)
    padded = await account.post(finalize, {"csr": b64(make_csr(["f.example.org"])[0]) + "=="})
    assert padded.problem_type == "malformed"
    assert (await account.post(str(order["url"]))).body["status"] == "ready"
    good, _ = make_csr(["www.f.example.org", "f.example.org"], cn="f.example.org")
    done = await account.post(finalize, {"csr": b64(good)})
    assert done.status == 200 and done.body["status"] == "processing"
    assert done.location == order["url"] and int(done.headers["retry-after"]) >= 1
    again = await account.post(finalize, {"csr": b64(good)})
    assert again.status == 403 and again.problem_type == "orderNotReady"


# 3.13 / 3.14 Certificates and revocation --------------------------------------------------------

async def test_c4_r2_r3_r4_download_and_revocation_rules(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    order = await ready_order(account, http, ["r.example.org"])
    order_id = str(order["url"]).rsplit("/", 1)[1]
    pem = issue_test_certificate(["r.example.org"])
    cert = x509.load_pem_x509_certificate(pem.encode())
    state = http.app.state.ra  # type: ignore[attr-defined]
    async with state.db.transaction() as session:
        await session.execute(update(Order).where(Order.id == order_id).values(status="processing"))
        cert_id = await store_certificate(session, order_id, pem, format(cert.serial_number, "x"),
                                          cert.not_valid_before_utc, cert.not_valid_after_utc)
    url = f"https://ra.test/acme/acme/certificate/{cert_id}"
    stranger = TestAcmeClient(account.http, account.directory_url)
    await stranger.load_directory()
    await stranger.register()
    assert (await stranger.post(url)).problem_type == "unauthorized"
    der = b64(cert.public_bytes(Encoding.DER))
    revoke = account.directory["revokeCert"]
    assert (await stranger.post(revoke, {"certificate": der})).problem_type == "unauthorized"
    assert (await account.post(revoke, {"certificate": der, "reason": 7})).problem_type == "badRevocationReason"
    assert (await account.post(revoke, {"certificate": der, "reason": "1"})).problem_type == "badRevocationReason"
    unknown = issue_test_certificate(["r.example.org"])
    unknown_der = b64(x509.load_pem_x509_certificate(unknown.encode()).public_bytes(Encoding.DER))
    assert (await account.post(revoke, {"certificate": unknown_der})).status == 404
    async with state.db.transaction() as session:
        from acme_ra.db.models import Certificate

        await session.execute(update(Certificate).where(Certificate.id == cert_id)
                              .values(revoked_at=dt.datetime.now(dt.UTC), revocation_reason=4))
    assert (await account.post(revoke, {"certificate": der})).problem_type == "alreadyRevoked"


# 3.15 Errors ------------------------------------------------------------------------------------

def test_l2_problem_catalogue_is_the_registered_set() -> None:
    from acme_ra.protocol.problems import STATUS_BY_TYPE

    registered = {
        "accountDoesNotExist", "alreadyRevoked", "badCSR", "badNonce", "badPublicKey", "badRevocationReason",
        "badSignatureAlgorithm", "caa", "compound", "connection", "dns", "externalAccountRequired",
        "incorrectResponse", "invalidContact", "malformed", "orderNotReady", "rateLimited", "rejectedIdentifier",
        "serverInternal", "tls", "unauthorized", "unsupportedContact", "unsupportedIdentifier",
        "userActionRequired", "alreadyReplaced", "invalidProfile",
    }
    assert set(STATUS_BY_TYPE) == registered
    assert STATUS_BY_TYPE["rateLimited"] == 429 and STATUS_BY_TYPE["alreadyReplaced"] == 409


# Further lines: transport, JWS, nonces, directory ------------------------------------------------

async def test_t2_link_index_on_errors_and_gets_not_on_the_directory(client: TestAcmeClient) -> None:
    index = f'<{client.directory_url}>;rel="index"'
    error = await client.post(client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True)
    assert error.problem_type == "accountDoesNotExist" and index in error.headers.get_list("link")
    nonce = await client.http.get(client.directory["newNonce"])
    assert index in nonce.headers.get_list("link")
    ari = await client.http.get(f"{client.directory['renewalInfo']}/AAAA.AQ")
    assert ari.status_code == 400 and index in ari.headers.get_list("link")
    directory = await client.http.get(client.directory_url)
    assert "link" not in directory.headers


async def test_t5_a_request_without_user_agent_is_served(account: TestAcmeClient) -> None:
    """Decision: acme-ra does not refuse a request without User-Agent (Boulder does not either)."""
    assert account.kid
    request = account.http.build_request("POST", account.kid, content=account.sign(account.kid, "", await account.nonce()),
                                         headers={"Content-Type": "application/jose+json"})
    del request.headers["user-agent"]
    assert (await account.http.send(request)).status_code == 200


async def test_t8_ids_are_128_random_bits(account: TestAcmeClient) -> None:
    assert account.kid
    ids = [account.kid.rsplit("/", 1)[1]]
    for n in range(2):
        reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": f"t8-{n}.example.org"}]})
        ids.append((reply.location or "").rsplit("/", 1)[1])
        ids.append(reply.body["authorizations"][0].rsplit("/", 1)[1])
    assert len(set(ids)) == len(ids) and all(len(i) >= 22 for i in ids)


@pytest.mark.parametrize("case", ["no alg", "no key", "no nonce and no key"])
async def test_j3_missing_members_are_malformed(account: TestAcmeClient, case: str) -> None:
    assert account.kid
    cases: dict[str, dict[str, object]] = {"no alg": {"alg": None}, "no key": {"kid": None},
                                           "no nonce and no key": {"kid": None, "nonce": None}}
    body = account.sign(account.kid, "", await account.nonce(), header_overrides=cases[case])
    response = await raw_post(account, account.kid, body)
    assert response.status_code == 400 and problem(response) in ("malformed", "badNonce"), response.text
    if case != "no nonce and no key":
        assert problem(response) == "malformed"


async def test_n4_a_replay_nonce_request_header_is_ignored(account: TestAcmeClient) -> None:
    assert account.kid
    nonce = await account.nonce()
    response = await account.http.post(account.kid, content=account.sign(account.kid, "", nonce),
                                       headers={"Content-Type": "application/jose+json", "Replay-Nonce": "bogus"})
    assert response.status_code == 200 and response.headers["replay-nonce"] != "bogus"


async def test_d1_g5_no_new_authz_and_renewal_info_is_cacheable(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    assert "newAuthz" not in account.directory
    cert_id, _pem = await issued_order(account, http, "g5.example.org")
    response = await http.get(f"{account.directory['renewalInfo']}/{cert_id}")
    assert response.status_code == 200 and "max-age" in response.headers["cache-control"]


async def test_d2_website_and_caa_identities(client: TestAcmeClient, http: httpx.AsyncClient) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    saved = state.settings
    state.settings = saved.model_copy(update={"website_url": "https://ra.test/about", "caa_identities": "ca.example, Other.Example"})
    try:
        meta = (await client.load_directory())["meta"]
    finally:
        state.settings = saved
    assert meta["website"] == "https://ra.test/about" and meta["caaIdentities"] == ["ca.example", "other.example"]
    assert meta["externalAccountRequired"] is False and "termsOfService" not in meta


# Further lines: accounts and key rollover --------------------------------------------------------

async def test_a1_a2_existing_key_returns_the_stored_account_unchanged(client: TestAcmeClient) -> None:
    created = await client.register(contact=["mailto:first@example.org"])
    assert created.status == 201 and created.body["contact"] == ["mailto:first@example.org"]
    assert created.body["termsOfServiceAgreed"] is True
    again = await client.post(client.directory["newAccount"], {"termsOfServiceAgreed": True, "contact": ["mailto:second@example.org"]},
                              use_jwk=True)
    assert again.status == 200 and again.location == created.location
    assert again.body["contact"] == ["mailto:first@example.org"]


async def test_a9_deactivation_invalidates_pending_orders_and_is_final(client: TestAcmeClient, http: httpx.AsyncClient) -> None:
    from sqlalchemy import select

    await client.register()
    assert client.kid
    pending = await client.post(client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "a9.example.org"}]})
    authz_id = pending.body["authorizations"][0].rsplit("/", 1)[1]
    assert (await client.post(client.kid, {"status": "deactivated"})).body["status"] == "deactivated"
    state = http.app.state.ra  # type: ignore[attr-defined]
    from acme_ra.db.models import Authorization

    async with state.db.sessions() as session:
        order = (await session.execute(select(Order).where(Order.id == (pending.location or "").rsplit("/", 1)[1]))).scalar_one()
        authz = (await session.execute(select(Authorization).where(Authorization.id == authz_id))).scalar_one()
    assert order.status == "invalid" and authz.status == "deactivated"
    reactivate = await client.post(client.kid, {"status": "valid"})
    assert reactivate.status == 401 and reactivate.problem_type == "unauthorized"


async def test_k2_new_key_must_differ_and_be_acceptable(account: TestAcmeClient) -> None:
    assert account.kid
    url = account.directory["keyChange"]
    old = account.key.public_key().to_partial_json()
    same = await account.post(url, inner_jws(account.key, url, {"account": account.kid, "oldKey": old}))
    assert same.problem_type == "badPublicKey"
    weak = josepy.JWKRSA(key=rsa.generate_private_key(65537, 1024))
    refused = await account.post(url, inner_jws(weak, url, {"account": account.kid, "oldKey": old}))
    assert refused.status == 400 and refused.problem_type == "badPublicKey"


async def test_k4_orders_survive_a_rollover(account: TestAcmeClient) -> None:
    assert account.kid
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "k4.example.org"}]})
    url = account.directory["keyChange"]
    new = new_key("ec384")
    rolled = await account.post(url, inner_jws(new, url, {"account": account.kid, "oldKey": account.key.public_key().to_partial_json()}))
    assert rolled.status == 200
    account.key = new
    order = await account.post(reply.location or "")
    assert order.status == 200 and order.body["status"] == "pending"
    authz = await account.post(order.body["authorizations"][0])
    token = authz.body["challenges"][0]["token"]
    assert account.key_authorization(token).endswith(b64(new.thumbprint()))


# Further lines: orders, challenges, finalize, certificates ----------------------------------------

async def test_o2_subproblems_carry_the_identifier_not_the_top_level(account: TestAcmeClient) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [
        {"type": "dns", "value": "bad..example.org"}, {"type": "dns", "value": "-bad.example.org"}]})
    assert reply.status == 400 and "identifier" not in reply.body
    assert [s["identifier"]["value"] for s in reply.body["subproblems"]] == ["bad..example.org", "-bad.example.org"]


async def test_o7_every_new_order_is_a_new_order(account: TestAcmeClient) -> None:
    """Decision: no idempotent reuse of pending orders; each newOrder is a 201 with its own URL."""
    payload = {"identifiers": [{"type": "dns", "value": "o7.example.org"}]}
    first = await account.post(account.directory["newOrder"], payload)
    second = await account.post(account.directory["newOrder"], payload)
    assert first.status == second.status == 201 and first.location != second.location


async def test_o8_f8_retry_after_while_processing(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    order = await ready_order(account, http, ["o8.example.org"])
    csr, _ = make_csr(["o8.example.org"])
    done = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    assert done.status == 200 and done.body["status"] == "processing"
    polled = await account.post(str(order["url"]))
    assert polled.body["status"] == "processing" and int(polled.headers["retry-after"]) >= 1


async def test_z3_answering_a_settled_challenge(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    order = await ready_order(account, http, ["z3s.example.org"])
    authz = await account.post(order["authorizations"][0])  # type: ignore[index]
    assert authz.body["status"] == "valid" and authz.body["expires"].endswith("Z")
    answered = next(c for c in authz.body["challenges"] if c["status"] == "valid")
    assert answered["validated"].endswith("Z")
    again = await account.post(answered["url"], {})
    assert again.status == 200 and again.body["status"] == "valid"
    other = next(c for c in authz.body["challenges"] if c["status"] == "pending")
    assert (await account.post(other["url"], {})).problem_type == "malformed"


async def test_f4_f6_sha1_csr_and_unrequested_sans(account: TestAcmeClient, http: httpx.AsyncClient, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    order = await ready_order(account, http, ["f4.example.org"])
    key = ec.generate_private_key(ec.SECP256R1())

    def csr(extra: list[x509.GeneralName], digest: hashes.HashAlgorithm) -> str:
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("f4.example.org"), *extra]), False)
        # Any digest: the case is that the frontend refuses the weak ones cryptography can sign with.
        return b64(builder.sign(key, digest).public_bytes(serialization.Encoding.DER))  # type: ignore[arg-type]

    # cryptography refuses to sign with SHA-1: openssl makes that CSR.
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-new", "-sha1", "-key", str(tmp_path / "key.pem"), "-subj", "/",
         "-addext", "subjectAltName=DNS:f4.example.org", "-outform", "DER", "-out", str(tmp_path / "sha1.der")],
        check=True, capture_output=True)
    cases = {
        "sha1": b64((tmp_path / "sha1.der").read_bytes()),
        "email": csr([x509.RFC822Name("a@example.org")], hashes.SHA256()),
        "uri": csr([x509.UniformResourceIdentifier("https://example.org/")], hashes.SHA256()),
    }
    for case, value in cases.items():
        reply = await account.post(str(order["finalize"]), {"csr": value})
        assert reply.status == 400 and reply.problem_type == "badCSR", (case, reply.text)


async def test_c1_c3_only_certificates_and_pem_whatever_the_accept(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    """Decision (C3): only application/pem-certificate-chain is served; an Accept of
    application/pkix-cert still gets the PEM chain."""
    from sqlalchemy import select

    from acme_ra.db.models import Certificate

    cert_id, pem = await issued_order(account, http, "c1.example.org")
    state = http.app.state.ra  # type: ignore[attr-defined]
    async with state.db.sessions() as session:
        row_id = (await session.execute(select(Certificate.id).where(Certificate.ari_cert_id == cert_id))).scalar_one()
    url = f"https://ra.test/acme/acme/certificate/{row_id}"
    response = await account.http.post(url, content=account.sign(url, "", await account.nonce()),
                                       headers={"Content-Type": "application/jose+json", "Accept": "application/pkix-cert"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/pem-certificate-chain"
    blocks = [line for line in response.text.splitlines() if line.startswith("-----BEGIN")]
    assert blocks and set(blocks) == {"-----BEGIN CERTIFICATE-----"}
    assert response.text == pem


# Further lines: revocation with a signer stand-in, ARI window ------------------------------------

async def test_r2_r5_revocation_by_an_authorized_account_and_by_the_certificate_key(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from acme_ra import bus
    from tests.frontend.test_policy_profiles_ari import issued_order as issue

    state = http.app.state.ra  # type: ignore[attr-defined]
    asked: list[bus.RevokeRequest] = []

    async def signer(message: object) -> None:  # stands in for the signer's revoke RPC
        asked.append(bus.RevokeRequest.model_validate_json(message.data))  # type: ignore[attr-defined]
        await message.respond(bus.RevokeReply(outcome="revoked").model_dump_json().encode())  # type: ignore[attr-defined]

    subscription = await state.nc.subscribe(bus.SUBJECT_REVOKE_RPC, cb=signer)
    try:
        _cert_id, pem = await issue(account, http, "r5.example.org")
        der = b64(x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER))
        holder = TestAcmeClient(account.http, account.directory_url)
        await holder.load_directory()
        await holder.register()
        await ready_order(holder, http, ["r5.example.org"])  # valid authorizations for every name
        reply = await holder.post(account.directory["revokeCert"], {"certificate": der, "reason": 4})
        assert reply.status == 200 and reply.text == "" and reply.headers["replay-nonce"]
        assert asked and asked[-1].reason == 4
    finally:
        await subscription.unsubscribe()


def test_x4_window_is_two_thirds_of_the_lifetime_and_past_once_revoked() -> None:
    from acme_ra.db.models import Certificate
    from acme_ra_frontend.renewal_info import suggested_window

    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = Certificate(not_before=start, not_after=start + dt.timedelta(days=90), revoked_at=None)
    low, high = suggested_window(cert)
    assert low < start + dt.timedelta(days=60) < high and high - low < dt.timedelta(days=4)
    short = Certificate(not_before=start, not_after=start + dt.timedelta(days=6), revoked_at=None)
    low, high = suggested_window(short)
    assert low < start + dt.timedelta(days=3) < high
    cert.revoked_at = start + dt.timedelta(days=10)
    low, high = suggested_window(cert)
    assert low < high <= cert.revoked_at


# Further lines: JWS keys, EAB, key rollover, orders, IP identifiers, profiles ----------------------

async def test_j4_jwk_alg_disagreeing_with_the_header(client: TestAcmeClient) -> None:
    jwk = {**client.key.public_key().to_partial_json(), "alg": "ES384"}
    body = client.sign(client.directory["newAccount"], {"termsOfServiceAgreed": True}, await client.nonce(),
                       use_jwk=True, header_overrides={"jwk": jwk})
    response = await raw_post(client, client.directory["newAccount"], body)
    assert response.status_code == 400 and problem(response) == "badSignatureAlgorithm"


async def test_j5_ec_point_off_the_curve_is_bad_public_key(client: TestAcmeClient) -> None:
    jwk = client.key.public_key().to_partial_json()
    jwk["y"] = b64(bytes(31) + b"\x01")
    body = client.sign(client.directory["newAccount"], {"termsOfServiceAgreed": True}, await client.nonce(),
                       use_jwk=True, header_overrides={"jwk": jwk})
    response = await raw_post(client, client.directory["newAccount"], body)
    assert response.status_code == 400 and problem(response) == "badPublicKey"


async def test_e2_e4_hs512_and_an_unsolicited_binding(client: TestAcmeClient, http: httpx.AsyncClient) -> None:
    """EAB is optional here (externalAccountRequired false): a binding sent anyway is verified,
    so it may be reflected; HS512 works as HS256 does."""
    from tests.frontend.test_eab import binding, new_eab_key

    key = await new_eab_key(http)
    eab = binding(client, key.kid, key.hmac_key, alg="HS512")
    reply = await client.register(externalAccountBinding=eab)
    assert reply.status == 201 and reply.body["externalAccountBinding"] == eab
    stranger = TestAcmeClient(client.http, client.directory_url)
    await stranger.load_directory()
    forged = await stranger.register(externalAccountBinding=binding(stranger, key.kid, b64(b"k" * 32), alg="HS512"))
    assert forged.problem_type == "unauthorized"


async def test_k2_inner_signature_must_verify(account: TestAcmeClient) -> None:
    assert account.kid
    url = account.directory["keyChange"]
    inner = inner_jws(new_key(), url, {"account": account.kid, "oldKey": account.key.public_key().to_partial_json()})
    inner["signature"] = inner_jws(new_key(), url, {"account": account.kid})["signature"]
    reply = await account.post(url, inner)
    assert reply.status == 400 and reply.problem_type == "malformed"


async def test_a9_deactivation_leaves_certificates_alone(client: TestAcmeClient, http: httpx.AsyncClient) -> None:
    from sqlalchemy import select

    from acme_ra.db.models import Certificate

    await client.register()
    assert client.kid
    cert_id, _pem = await issued_order(client, http, "a9-cert.example.org")
    await client.post(client.kid, {"status": "deactivated"})
    state = http.app.state.ra  # type: ignore[attr-defined]
    async with state.db.sessions() as session:
        cert = (await session.execute(select(Certificate).where(Certificate.ari_cert_id == cert_id))).scalar_one()
    assert cert.revoked_at is None
    assert (await http.get(f"{client.directory['renewalInfo']}/{cert_id}")).status_code == 200


async def test_a10_orders_list_leaves_out_invalid_orders(client: TestAcmeClient) -> None:
    await client.register()
    assert client.kid
    kept = await client.post(client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "a10k.example.org"}]})
    dropped = await client.post(client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "a10d.example.org"}]})
    await client.post(dropped.body["authorizations"][0], {"status": "deactivated"})
    listed = (await client.post(client.kid + "/orders")).body["orders"]
    assert kept.location in listed and dropped.location not in listed


async def test_o4_an_order_cannot_be_changed(account: TestAcmeClient) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "o4i.example.org"}]})
    change = await account.post(reply.location or "", {"identifiers": [{"type": "dns", "value": "other.example.org"}],
                                                        "authorizations": []})
    assert change.problem_type == "malformed"
    again = await account.post(reply.location or "")
    assert again.body["identifiers"] == reply.body["identifiers"]
    assert again.body["authorizations"] == reply.body["authorizations"]


async def test_v4_f3_ip_order_needs_ip_sans_not_a_cn(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "ip", "value": "192.0.2.44"}]})
    state = http.app.state.ra  # type: ignore[attr-defined]
    authz = await account.post(reply.body["authorizations"][0])
    challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
    await account.post(challenge["url"], {})
    async with state.db.transaction() as session:
        await record_challenge_outcome(session, challenge["url"].rsplit("/", 1)[1], None, dt.timedelta(days=30))
    key = ec.generate_private_key(ec.SECP256R1())

    def csr(name: x509.Name, sans: list[x509.GeneralName]) -> str:
        builder = x509.CertificateSigningRequestBuilder().subject_name(name)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        return b64(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))

    cn_only = csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "192.0.2.44")]), [])
    dns_san = csr(x509.Name([]), [x509.DNSName("192.0.2.44")])
    for value in (cn_only, dns_san):
        refused = await account.post(reply.body["finalize"], {"csr": value})
        assert refused.status == 400 and refused.problem_type == "badCSR", refused.text
    good = csr(x509.Name([]), [x509.IPAddress(ipaddress.ip_address("192.0.2.44"))])
    assert (await account.post(reply.body["finalize"], {"csr": good})).body["status"] == "processing"


async def test_p4_finalize_with_a_withdrawn_profile(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    order = await ready_order(account, http, ["p4.example.org"])
    state = http.app.state.ra  # type: ignore[attr-defined]
    saved = state.settings
    state.settings = saved.model_copy(update={"profiles": "shortlived=Six-day certificates"})
    try:
        csr, _ = make_csr(["p4.example.org"])
        reply = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    finally:
        state.settings = saved
    assert reply.status == 400 and reply.problem_type == "invalidProfile"
    assert (await account.post(str(order["url"]))).body["status"] == "ready"


# V6: CAA checked again at finalization -----------------------------------------------------------

async def test_v6_stale_validation_has_caa_checked_again_at_finalize(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    from acme_ra import bus
    from acme_ra_frontend.caa_recheck import CAA_RECHECK_AFTER

    state = http.app.state.ra  # type: ignore[attr-defined]
    answers: list[bus.CaaRecheckReply] = []
    asked: list[bus.CaaRecheckRequest] = []

    async def validator(message: object) -> None:  # stands in for the validators' queue group
        asked.append(bus.CaaRecheckRequest.model_validate_json(message.data))  # type: ignore[attr-defined]
        await message.respond(answers.pop(0).model_dump_json().encode())  # type: ignore[attr-defined]

    saved = state.settings
    state.settings = saved.model_copy(update={"caa_identities": "ca.example"})
    subscription = await state.nc.subscribe(bus.SUBJECT_CAA_RPC, cb=validator)
    try:
        fresh = await ready_order(account, http, ["v6-fresh.example.org"])
        csr, _ = make_csr(["v6-fresh.example.org"])
        assert (await account.post(str(fresh["finalize"]), {"csr": b64(csr)})).status == 200
        assert asked == []  # validated just now: no second look

        stale = await ready_order(account, http, ["v6.example.org", "www.v6.example.org"])
        async with state.db.transaction() as session:
            authz_ids = [u.rsplit("/", 1)[1] for u in stale["authorizations"]]  # type: ignore[attr-defined]
            await session.execute(update(Challenge).where(Challenge.authz_id == authz_ids[0], Challenge.status == "valid")
                                  .values(validated=dt.datetime.now(dt.UTC) - CAA_RECHECK_AFTER - dt.timedelta(minutes=1)))
        csr, _ = make_csr(["v6.example.org", "www.v6.example.org"])
        answers.append(bus.CaaRecheckReply(outcome="refused", problem={"type": "caa", "detail": "CAA record for v6.example.org prevents issuance"}))
        refused = await account.post(str(stale["finalize"]), {"csr": b64(csr)})
        assert refused.status == 403 and refused.problem_type == "caa", refused.text
        assert [(c.name, c.method) for c in asked[-1].checks] == [("v6.example.org", "http-01")]
        assert asked[-1].account_uri == account.kid
        assert (await account.post(str(stale["url"]))).body["status"] == "ready"
        answers.append(bus.CaaRecheckReply(outcome="permitted"))
        assert (await account.post(str(stale["finalize"]), {"csr": b64(csr)})).body["status"] == "processing"
    finally:
        await subscription.unsubscribe()
        state.settings = saved


async def test_v6_no_validator_to_ask_is_503(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    from acme_ra_frontend.caa_recheck import CAA_RECHECK_AFTER

    state = http.app.state.ra  # type: ignore[attr-defined]
    order = await ready_order(account, http, ["v6-none.example.org"])
    async with state.db.transaction() as session:
        authz_id = order["authorizations"][0].rsplit("/", 1)[1]  # type: ignore[index]
        await session.execute(update(Challenge).where(Challenge.authz_id == authz_id, Challenge.status == "valid")
                              .values(validated=dt.datetime.now(dt.UTC) - CAA_RECHECK_AFTER * 2))
    saved = state.settings
    state.settings = saved.model_copy(update={"caa_identities": "ca.example"})
    try:
        csr, _ = make_csr(["v6-none.example.org"])
        reply = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    finally:
        state.settings = saved
    assert reply.status == 503 and reply.problem_type == "serverInternal" and reply.headers["retry-after"]


# L1: the other rate limits ------------------------------------------------------------------------

async def test_l1_new_accounts_per_address(client: TestAcmeClient, http: httpx.AsyncClient) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    saved = state.settings
    state.settings = saved.model_copy(update={"rate_new_accounts_per_ip_per_hour": 1})
    try:
        replies = []
        for _ in range(2):
            newcomer = TestAcmeClient(client.http, client.directory_url)
            await newcomer.load_directory()
            replies.append(await newcomer.register())
    finally:
        state.settings = saved
    limited = [r for r in replies if r.status == 429]
    assert limited and limited[0].problem_type == "rateLimited" and int(limited[0].headers["retry-after"]) > 0


async def test_l1_failed_validations_per_name(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    for _ in range(2):
        reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "l1f.example.org"}]})
        authz = await account.post(reply.body["authorizations"][0])
        challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
        await account.post(challenge["url"], {})
        async with state.db.transaction() as session:
            await record_challenge_outcome(session, challenge["url"].rsplit("/", 1)[1],
                                           {"type": "connection", "detail": "refused"}, dt.timedelta(days=30))
    saved = state.settings
    state.settings = saved.model_copy(update={"rate_failed_validations_per_name_per_hour": 2})
    try:
        again = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "l1f.example.org"}]})
    finally:
        state.settings = saved
    assert again.status == 429 and again.problem_type == "rateLimited"


async def test_l1_certificates_per_registered_domain(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    first = await ready_order(account, http, ["a.l1c.example"])
    second = await ready_order(account, http, ["b.l1c.example"])
    state = http.app.state.ra  # type: ignore[attr-defined]
    saved = state.settings
    state.settings = saved.model_copy(update={"rate_certificates_per_domain_per_week": 1})
    try:
        one = await account.post(str(first["finalize"]), {"csr": b64(make_csr(["a.l1c.example"])[0])})
        two = await account.post(str(second["finalize"]), {"csr": b64(make_csr(["b.l1c.example"])[0])})
    finally:
        state.settings = saved
    assert one.status == 200 and two.status == 429 and two.problem_type == "rateLimited"
    assert (await account.post(str(second["url"]))).body["status"] == "ready"


async def test_e2_hs384_binding(client: TestAcmeClient, http: httpx.AsyncClient) -> None:
    import base64
    import hashlib
    import hmac

    from tests.frontend.test_eab import new_eab_key

    key = await new_eab_key(http)
    protected = b64(json.dumps({"alg": "HS384", "kid": key.kid, "url": client.directory["newAccount"]}).encode())
    payload = b64(json.dumps(client.key.public_key().to_partial_json()).encode())
    raw = base64.urlsafe_b64decode(key.hmac_key + "=" * (-len(key.hmac_key) % 4))
    mac = hmac.new(raw, f"{protected}.{payload}".encode(), hashlib.sha384).digest()
    reply = await client.register(externalAccountBinding={"protected": protected, "payload": payload, "signature": b64(mac)})
    assert reply.status == 201, reply.text


async def test_l1_new_orders_per_eab_key(client: TestAcmeClient, http: httpx.AsyncClient) -> None:
    from tests.frontend.test_eab import binding, new_eab_key

    key = await new_eab_key(http)
    assert (await client.register(externalAccountBinding=binding(client, key.kid, key.hmac_key))).status == 201
    state = http.app.state.ra  # type: ignore[attr-defined]
    saved = state.settings
    state.settings = saved.model_copy(update={"rate_new_orders_per_eab_key_per_hour": 1})
    try:
        order = {"identifiers": [{"type": "dns", "value": "l1e.example.org"}]}
        first = await client.post(client.directory["newOrder"], order)
        second = await client.post(client.directory["newOrder"], order)
    finally:
        state.settings = saved
    assert first.status == 201 and second.status == 429 and second.problem_type == "rateLimited"


async def test_r6_keys_revoked_for_key_compromise_are_blocked(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    """Once a certificate is revoked for keyCompromise the signer blocks its key
    (services/signer revoker.py, tested with the signer in tests/signer): here the block is
    recorded directly, and every way of using the key again is refused."""
    state = http.app.state.ra  # type: ignore[attr-defined]
    raw = ec.generate_private_key(ec.SECP256R1())
    compromised = josepy.JWKEC(key=raw)
    async with state.db.transaction() as session:
        await blocked_keys.block(session, raw.public_key(), None)

    # As a new account's key: badPublicKey, and no account is made.
    newcomer = TestAcmeClient(account.http, account.directory_url, compromised)
    await newcomer.load_directory()
    refused = await newcomer.register()
    assert refused.status == 400 and refused.problem_type == "badPublicKey", refused.text
    assert "keyCompromise" in refused.body["detail"]

    # As the new key of a rollover: badPublicKey, the account keeps its key.
    assert account.kid
    url = account.directory["keyChange"]
    rolled = await account.post(url, inner_jws(compromised, url, {
        "account": account.kid, "oldKey": account.key.public_key().to_partial_json()}))
    assert rolled.status == 400 and rolled.problem_type == "badPublicKey", rolled.text
    assert (await account.post(account.kid)).status == 200

    # In a CSR: badCSR, and the order stays ready.
    order = await ready_order(account, http, ["r6.example.org"])
    csr, _ = make_csr(["r6.example.org"], raw)
    finalized = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    assert finalized.status == 400 and finalized.problem_type == "badCSR", finalized.text
    assert (await account.post(str(order["url"]))).body["status"] == "ready"
    fresh, _ = make_csr(["r6.example.org"])
    assert (await account.post(str(order["finalize"]), {"csr": b64(fresh)})).status == 200
