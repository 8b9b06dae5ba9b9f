"""Hostile JWS, JWK, nonce and JSON input against the real topology (the session ``lab``).

Every case is refused with its RFC 8555 problem type (never a 500), quickly, and the services
are still up afterwards. Sources: RFC 8555 §6.2, §6.5, §7.3, §10; RFC 7515 §4.1.11, §5.2;
RFC 7518 §2, §6; RFC 7638; OWASP API Top 10 (API1 object-level authorization, API3 property
level: a client's extra JWK members, API4 resource consumption: exponents, depth, sizes).
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import josepy
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conformance.client import Reply, TestAcmeClient, alg_for, b64, new_key
from tests.hostile.conftest import Timer, assert_still_up
from tests.support.lab import Lab

pytestmark = pytest.mark.integration

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture
async def client(lab: Lab) -> AsyncIterator[TestAcmeClient]:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(lab.ca_bundle)), timeout=30) as http:
        acme = TestAcmeClient(http, lab.directory_url)
        await acme.load_directory()
        yield acme


@pytest.fixture(scope="module")
async def account(lab: Lab) -> AsyncIterator[TestAcmeClient]:
    """One account for the module: the lab keeps its default limit of new accounts per address
    (20 an hour), shared by every test on the lab."""
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(lab.ca_bundle)), timeout=30) as http:
        acme = TestAcmeClient(http, lab.directory_url)
        await acme.load_directory()
        reply = await acme.register(contact=["mailto:hostile@example.org"])
        assert reply.status == 201, reply.text
        yield acme


def signed(client: TestAcmeClient, protected: bytes | str, payload: bytes | str,
           key: josepy.JWK | None = None) -> bytes:
    """A flattened JWS over exactly these header and payload bytes (or base64url texts)."""
    key = key or client.key
    protected_b64 = protected if isinstance(protected, str) else b64(protected)
    payload_b64 = payload if isinstance(payload, str) else b64(payload)
    signature = alg_for(key).sign(key.key, f"{protected_b64}.{payload_b64}".encode())
    return json.dumps({"protected": protected_b64, "payload": payload_b64, "signature": b64(signature)}).encode()


async def header(client: TestAcmeClient, url: str, use_jwk: bool = True, **members: Any) -> dict[str, Any]:
    """A protected header as the client would send it, with ``members`` replaced (None: removed)."""
    key = client.key
    protected: dict[str, Any] = {"alg": alg_for(key).name, "nonce": await client.nonce(), "url": url}
    if use_jwk or client.kid is None:
        protected["jwk"] = key.public_key().to_partial_json()
    else:
        protected["kid"] = client.kid
    protected.update(members)
    return {k: v for k, v in protected.items() if v is not None}


async def refused(lab: Lab, client: TestAcmeClient, url: str, body: bytes, status: int, problem: str,
                  content_type: str = "application/jose+json") -> Reply:
    with Timer() as timer:
        reply = await client.post_raw(url, body, content_type)
    assert (reply.status, reply.problem_type) == (status, problem), reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in reply.text
    timer.assert_quick()
    assert_still_up(lab)
    return reply


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rsa_jwk(n: int, e: int = 65537) -> dict[str, str]:
    def uint(value: int) -> str:
        return b64(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))
    return {"kty": "RSA", "n": uint(n), "e": uint(e)}


def rsa_modulus(bits: int = 2048) -> int:
    return rsa.generate_private_key(65537, bits).public_key().public_numbers().n


# The live 500s of issue 18 ------------------------------------------------------------------------

async def test_jwk_with_a_number_for_n_is_bad_public_key(lab: Lab, client: TestAcmeClient) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url, jwk={"kty": "RSA", "n": 1, "e": "AQAB"})
    await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, "badPublicKey")


@pytest.mark.parametrize("member", ["kty", "crv", "x"])
async def test_jwk_member_nested_a_thousand_deep_is_malformed(lab: Lab, client: TestAcmeClient, member: str) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url)
    deep = "[" * 1000 + "]" * 1000
    text = json.dumps(protected).replace(f'"{member}": ', f'"{member}": {deep}, "x{member}": ', 1)
    reply = await refused(lab, client, url, signed(client, text.encode(), b"{}"), 400, "malformed")
    assert "nested deeper than" in reply.body["detail"]


async def test_deep_payload_is_malformed(lab: Lab, account: TestAcmeClient) -> None:
    url = account.directory["newOrder"]
    protected = await header(account, url, use_jwk=False)
    payload = b'{"identifiers": ' + b"[" * 900 + b"]" * 900 + b"}"
    reply = await refused(lab, account, url, signed(account, json.dumps(protected).encode(), payload), 400, "malformed")
    assert "nested deeper than" in reply.body["detail"]


async def test_nul_in_kid_is_malformed(lab: Lab, account: TestAcmeClient) -> None:
    url = account.directory["newOrder"]
    assert account.kid is not None
    protected = await header(account, url, use_jwk=False, kid=account.kid + "\x00")
    body = signed(account, json.dumps(protected).encode(), b'{"identifiers": []}')
    reply = await refused(lab, account, url, body, 400, "malformed")
    assert "NUL" in reply.body["detail"]


async def test_nul_anywhere_in_the_payload_is_malformed(lab: Lab, account: TestAcmeClient) -> None:
    url = account.directory["newOrder"]
    payload = {"identifiers": [{"type": "dns", "value": "a\x00.example.org"}]}
    reply = await refused(lab, account, url, account.sign(url, payload, await account.nonce()), 400, "malformed")
    assert "NUL" in reply.body["detail"]
    body = account.sign(url, {"identifiers": [], "x\x00": 1}, await account.nonce())
    await refused(lab, account, url, body, 400, "malformed")


async def test_nul_in_an_eab_kid_is_malformed(lab: Lab, client: TestAcmeClient) -> None:
    url = client.directory["newAccount"]
    eab_header = b64(json.dumps({"alg": "HS256", "kid": "k\x00", "url": url}).encode())
    eab_payload = b64(json.dumps(client.key.public_key().to_partial_json()).encode())
    binding = {"protected": eab_header, "payload": eab_payload, "signature": b64(b"\x00" * 32)}
    body = client.sign(url, {"termsOfServiceAgreed": True, "externalAccountBinding": binding}, await client.nonce(),
                       use_jwk=True)
    await refused(lab, client, url, body, 400, "malformed")


def other_spellings(nonce: str) -> list[str]:
    """The other base64url strings that decode to the same bytes as ``nonce`` (non-zero low bits
    in the last character)."""
    unused_bits = {2: 4, 3: 2}.get(len(nonce) % 4, 0)
    index = _B64_ALPHABET.index(nonce[-1])
    return [nonce[:-1] + _B64_ALPHABET[index | low] for low in range(1, 1 << unused_bits)]


async def test_a_nonce_is_accepted_in_its_canonical_spelling_only(lab: Lab, account: TestAcmeClient) -> None:
    nonce = await account.nonce()
    spellings = other_spellings(nonce)
    assert spellings, f"nonce {nonce!r} has no unused bits to play with"
    url = account.kid
    assert url is not None
    for spelling in spellings:
        reply = await refused(lab, account, url, account.sign(url, "", spelling), 400, "badNonce")
        assert reply.headers["replay-nonce"]
    reply = await account.post_raw(url, account.sign(url, "", nonce))
    assert reply.status == 200, reply.text  # the canonical spelling was not spent by the others
    await refused(lab, account, url, account.sign(url, "", nonce), 400, "badNonce")


@pytest.mark.parametrize("exponent", [3, 65539, 2**31 - 1, 2**4096 + 1, 65536, 1])
async def test_rsa_exponent_other_than_65537_is_bad_public_key(lab: Lab, client: TestAcmeClient,
                                                               exponent: int) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url, jwk=rsa_jwk(rsa_modulus(), exponent))
    body = signed(client, json.dumps(protected).encode(), b"{}")
    reply = await refused(lab, client, url, body, 400, "badPublicKey")
    assert "65537" in reply.body["detail"]


@pytest.mark.parametrize("modulus", ["1024 bits", "4104 bits", "8192 bits", "2047 bits", "2052 bits", "even",
                                     "small factor"])
async def test_rsa_modulus_out_of_policy_is_bad_public_key(lab: Lab, client: TestAcmeClient, modulus: str) -> None:
    n = {
        "1024 bits": lambda: rsa_modulus(1024),
        "4104 bits": lambda: (1 << 4103) + 1,
        "8192 bits": lambda: (1 << 8191) + 1,
        "2047 bits": lambda: (1 << 2046) + 1,
        "2052 bits": lambda: (1 << 2051) + 1,
        "even": lambda: rsa_modulus() + 1,
        "small factor": lambda: 7 * ((1 << 2045) + 1),
    }[modulus]()
    url = client.directory["newAccount"]
    protected = await header(client, url, jwk=rsa_jwk(n))
    await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, "badPublicKey")


async def test_an_rsa_account_key_of_4096_bits_is_accepted(lab: Lab, client: TestAcmeClient) -> None:
    client.key = josepy.JWKRSA(key=rsa.generate_private_key(65537, 4096))  # 2048: the next test
    reply = await client.register()
    assert reply.status == 201, reply.text


async def test_the_stored_jwk_is_canonical(lab: Lab, client: TestAcmeClient) -> None:
    """Extra members (OWASP API3: mass assignment) are neither stored nor echoed."""
    url = client.directory["newAccount"]
    jwk = client.key.public_key().to_partial_json()
    sent = {**jwk, "use": "sig", "kid": "mine", "alg": "ES256", "junk": "j" * 3000, "key_ops": ["verify"]}
    protected = await header(client, url, jwk=sent)
    reply = await client.post_raw(url, signed(client, json.dumps(protected).encode(),
                                              json.dumps({"termsOfServiceAgreed": True}).encode()))
    assert reply.status == 201, reply.text
    assert reply.body["key"] == {"crv": "P-256", "kty": "EC", "x": jwk["x"], "y": jwk["y"]}
    assert reply.location is not None
    client.kid = reply.location
    again = await client.post(reply.location, "")
    assert again.status == 200 and again.body["key"] == reply.body["key"], again.text
    assert_still_up(lab)


async def test_an_rsa_modulus_with_a_leading_zero_is_stored_without_it(lab: Lab, client: TestAcmeClient) -> None:
    client.key = josepy.JWKRSA(key=rsa.generate_private_key(65537, 2048))
    url = client.directory["newAccount"]
    jwk = client.key.public_key().to_partial_json()
    padded = {**jwk, "n": b64(b"\x00" + unb64(jwk["n"]))}
    protected = await header(client, url, jwk=padded)
    reply = await client.post_raw(url, signed(client, json.dumps(protected).encode(),
                                              json.dumps({"termsOfServiceAgreed": True}).encode()))
    assert reply.status == 201, reply.text
    assert reply.body["key"] == {"e": "AQAB", "kty": "RSA", "n": jwk["n"]}


@pytest.mark.parametrize("private", ["d", "p", "k"])
async def test_a_private_jwk_is_malformed(lab: Lab, client: TestAcmeClient, private: str) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url, jwk={**client.key.public_key().to_partial_json(), private: "AAAA"})
    await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, "malformed")


# Elliptic-curve keys (RFC 7518 §6.2.1) --------------------------------------------------------------

def ec_jwk(**members: Any) -> dict[str, Any]:
    jwk = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1())).public_key().to_partial_json()
    jwk.update(members)
    return {k: v for k, v in jwk.items() if v is not None}


@pytest.mark.parametrize("case", ["off the curve", "short x", "long y", "unknown crv", "secp256k1", "crv number",
                                  "x missing", "x empty", "x padded", "x bad chars", "kty oct", "kty OKP", "kty list"])
async def test_bad_ec_keys_are_bad_public_key(lab: Lab, client: TestAcmeClient, case: str) -> None:
    good = ec_jwk()
    x = unb64(good["x"])
    cases: dict[str, Callable[[], Any]] = {
        "off the curve": lambda: {**good, "y": b64(bytes(31) + b"\x01")},
        "short x": lambda: {**good, "x": b64(x[1:])},
        "long y": lambda: {**good, "y": b64(b"\x00" + unb64(good["y"]))},
        "unknown crv": lambda: {**good, "crv": "P-999"},
        "secp256k1": lambda: {**good, "crv": "secp256k1"},
        "crv number": lambda: {**good, "crv": 256},
        "x missing": lambda: ec_jwk(x=None),
        "x empty": lambda: {**good, "x": ""},
        "x padded": lambda: {**good, "x": good["x"] + "="},
        "x bad chars": lambda: {**good, "x": "+/" + good["x"][2:]},
        "kty oct": lambda: {"kty": "oct", "k": "AAAA"},
        "kty OKP": lambda: {"kty": "OKP", "crv": "Ed25519", "x": good["x"]},
        "kty list": lambda: {**good, "kty": ["EC"]},
    }
    jwk = cases[case]()
    url = client.directory["newAccount"]
    protected = await header(client, url, jwk=jwk)
    await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, "badPublicKey")


# Algorithms (RFC 8555 §6.2: badSignatureAlgorithm with the algorithms accepted) -----------------------

@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "ES384", "PS256", "EdDSA", "es256", ""])
async def test_unacceptable_alg_is_bad_signature_algorithm(lab: Lab, client: TestAcmeClient, alg: str) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url, alg=alg)
    expected = "malformed" if alg == "" else "badSignatureAlgorithm"  # an empty alg is a missing alg
    reply = await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, expected)
    if expected == "badSignatureAlgorithm":
        assert reply.body["algorithms"] == ["ES256", "ES384", "ES512", "RS256"]


async def test_jwk_alg_disagreeing_with_the_header_is_bad_signature_algorithm(lab: Lab, client: TestAcmeClient) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url, jwk={**client.key.public_key().to_partial_json(), "alg": "ES384"})
    await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, "badSignatureAlgorithm")


async def test_rsa_key_with_an_es256_header_is_bad_signature_algorithm(lab: Lab, client: TestAcmeClient) -> None:
    url = client.directory["newAccount"]
    rsa_key = josepy.JWKRSA(key=rsa.generate_private_key(65537, 2048))
    protected = await header(client, url, jwk=rsa_key.public_key().to_partial_json(), alg="ES256")
    await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, "badSignatureAlgorithm")


# The envelope and the header (RFC 8555 §6.2, RFC 7515) -----------------------------------------------

async def test_both_jwk_and_kid_is_malformed(lab: Lab, account: TestAcmeClient) -> None:
    url = account.directory["newOrder"]
    protected = await header(account, url, use_jwk=True, kid=account.kid)
    await refused(lab, account, url, signed(account, json.dumps(protected).encode(), b"{}"), 400, "malformed")


async def test_url_mismatch_is_unauthorized(lab: Lab, account: TestAcmeClient) -> None:
    url = account.directory["newOrder"]
    body = account.sign(account.directory["newAccount"], {"identifiers": []}, await account.nonce())
    await refused(lab, account, url, body, 403, "unauthorized")


async def test_duplicate_header_members_are_malformed(lab: Lab, client: TestAcmeClient) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url)
    text = json.dumps(protected)[:-1] + ', "alg": "none"}'
    reply = await refused(lab, client, url, signed(client, text.encode(), b"{}"), 400, "malformed")
    assert "duplicate" in reply.body["detail"]
    nested = json.dumps(protected).replace('"kty": ', '"kty": "EC", "kty": ', 1)
    await refused(lab, client, url, signed(client, nested.encode(), b"{}"), 400, "malformed")


@pytest.mark.parametrize("payload", [b"[]", b'"text"', b"1", b"null", b"true", b"{", b'{"a": 1e400}', b"\xff\xfe",
                                     b'{"a": "\\ud800"}', b'{"a": NaN}'])
async def test_payload_that_is_not_a_json_object_is_malformed(lab: Lab, client: TestAcmeClient,
                                                               payload: bytes) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url)
    await refused(lab, client, url, signed(client, json.dumps(protected).encode(), payload), 400, "malformed")


@pytest.mark.parametrize("text", [b'["alg"]', b"\xc3\x28", b'{"alg": 1e400}', b"", b'{"alg": "ES256"} x'])
async def test_protected_header_that_is_not_a_json_object_is_malformed(lab: Lab, client: TestAcmeClient,
                                                                       text: bytes) -> None:
    url = client.directory["newAccount"]
    await refused(lab, client, url, signed(client, text, b"{}"), 400, "malformed")


async def test_huge_integers_are_handled(lab: Lab, client: TestAcmeClient) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url)
    text = json.dumps(protected)[:-1] + ', "x": ' + "9" * 4000 + "}"
    await refused(lab, client, url, signed(client, text.encode(), b"{}"), 400, "malformed")
    protected = await header(client, url, alg=10**30)
    await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, "malformed")


@pytest.mark.parametrize("part", ["protected", "payload", "signature"])
@pytest.mark.parametrize("spoil", ["padding", "plus", "space", "non-canonical", "number"])
async def test_bad_base64url_is_malformed(lab: Lab, client: TestAcmeClient, part: str, spoil: str) -> None:
    url = client.directory["newAccount"]
    body = json.loads(client.sign(url, {"termsOfServiceAgreed": True}, await client.nonce(), use_jwk=True))
    value = body[part]
    if spoil == "non-canonical" and len(value) % 4 == 0:
        value = value[:-1]  # make room for unused bits: a different, canonical or not, value
    spoiled: dict[str, Callable[[], Any]] = {
        "padding": lambda: value + "=" * (-len(value) % 4 or 4),
        "plus": lambda: "+" + value[1:],
        "space": lambda: value[:4] + " " + value[4:],
        "non-canonical": lambda: other_spellings(value)[0] if other_spellings(value) else value + "A=",
        "number": lambda: 12,
    }
    body[part] = spoiled[spoil]()
    await refused(lab, client, url, json.dumps(body).encode(), 400, "malformed")


@pytest.mark.parametrize("members", [{"b64": False, "crit": ["b64"]}, {"crit": ["exp"], "exp": 1}, {"crit": []},
                                     {"b64": False}])
async def test_crit_and_b64_are_malformed(lab: Lab, client: TestAcmeClient, members: dict[str, Any]) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url, **members)
    await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, "malformed")


async def test_other_serializations_are_malformed(lab: Lab, client: TestAcmeClient) -> None:
    url = client.directory["newAccount"]
    body = json.loads(client.sign(url, {"termsOfServiceAgreed": True}, await client.nonce(), use_jwk=True))
    compact = f"{body['protected']}.{body['payload']}.{body['signature']}".encode()
    await refused(lab, client, url, compact, 400, "malformed")
    general = {"payload": body["payload"], "signatures": [{"protected": body["protected"],
                                                           "signature": body["signature"]}] * 2}
    await refused(lab, client, url, json.dumps(general).encode(), 400, "malformed")
    await refused(lab, client, url, json.dumps({**body, "header": {"kid": "x"}}).encode(), 400, "malformed")
    await refused(lab, client, url, json.dumps({**body, "signature": ""}).encode(), 400, "malformed")
    await refused(lab, client, url, json.dumps([body]).encode(), 400, "malformed")


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/jose", ""])
async def test_wrong_content_type_is_415(lab: Lab, client: TestAcmeClient, content_type: str) -> None:
    url = client.directory["newAccount"]
    body = client.sign(url, {"termsOfServiceAgreed": True}, await client.nonce(), use_jwk=True)
    await refused(lab, client, url, body, 415, "malformed", content_type)


async def test_a_forged_signature_is_malformed_and_does_not_burn_the_nonce(lab: Lab, client: TestAcmeClient) -> None:
    url = client.directory["newAccount"]
    nonce = await client.nonce()
    body = json.loads(client.sign(url, {"termsOfServiceAgreed": True}, nonce, use_jwk=True))
    forged = {**body, "signature": b64(b"\x01" * 64)}
    await refused(lab, client, url, json.dumps(forged).encode(), 400, "malformed")
    reply = await client.post_raw(url, json.dumps(body).encode())
    assert reply.status == 201, reply.text


@pytest.mark.parametrize("nonce", [None, "", 12, "not base64!", "AAAA", "A" * 43])
async def test_missing_or_foreign_nonces_are_bad_nonce(lab: Lab, client: TestAcmeClient, nonce: Any) -> None:
    url = client.directory["newAccount"]
    protected = await header(client, url, nonce=nonce)
    reply = await refused(lab, client, url, signed(client, json.dumps(protected).encode(), b"{}"), 400, "badNonce")
    assert reply.headers["replay-nonce"]


# Accounts (OWASP API1: object-level authorization) ----------------------------------------------------

async def test_an_unknown_kid_is_account_does_not_exist(lab: Lab, account: TestAcmeClient) -> None:
    url = account.directory["newOrder"]
    assert account.kid is not None
    for kid in (account.kid + "x", account.kid.rsplit("/", 1)[0] + "/" + "é" * 20, "https://elsewhere/acct/1"):
        protected = await header(account, url, use_jwk=False, kid=kid)
        body = signed(account, json.dumps(protected).encode(), b'{"identifiers": []}')
        await refused(lab, account, url, body, 400, "accountDoesNotExist")


async def test_another_accounts_url_is_unauthorized(lab: Lab, account: TestAcmeClient) -> None:
    other = TestAcmeClient(account.http, account.directory_url, new_key())
    await other.load_directory()
    assert (await other.register()).status == 201
    assert other.kid is not None
    await refused(lab, account, other.kid, account.sign(other.kid, "", await account.nonce()), 403, "unauthorized")
    body = account.sign(other.kid, {"status": "deactivated"}, await account.nonce())
    await refused(lab, account, other.kid, body, 403, "unauthorized")
    assert (await other.post(other.kid, "")).body["status"] == "valid"


@pytest.mark.parametrize("resource", ["order", "authz", "certificate", "account"])
async def test_nul_in_a_resource_path_is_never_a_500(lab: Lab, account: TestAcmeClient, resource: str) -> None:
    """The path's id goes into SQL: PostgreSQL refuses NUL in text."""
    assert account.kid is not None
    url = account.kid.rsplit("/account/", 1)[0] + f"/{resource}/x%00y"
    reply = await account.post(url, "")
    assert reply.status in (400, 403, 404) and reply.problem_type in ("malformed", "unauthorized"), reply.text
    assert_still_up(lab)


@pytest.mark.parametrize("cursor", ["%C2%B2.abc", "%D9%A1.abc", "-1.abc", "1e3.abc", "99999999999999999999.abc",
                                    "1.%00", "%00", "1.", ""])
async def test_an_odd_orders_cursor_is_malformed(lab: Lab, account: TestAcmeClient, cursor: str) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` fails: the orders list's cursor (``after``, the
    Link of a previous page) is ASCII digits, a dot and an order id; past year 9999 is refused too."""
    assert account.kid is not None
    url = f"{account.kid}/orders?after={cursor}"
    await refused(lab, account, url, account.sign(url, "", await account.nonce()), 400, "malformed")


async def test_key_change_stores_the_new_key_canonical(lab: Lab, client: TestAcmeClient) -> None:
    """keyChange (RFC 8555 §7.3.5): the new key's extra members are not stored either."""
    assert (await client.register()).status == 201
    assert client.kid is not None
    url = client.directory["keyChange"]
    new = new_key("ec384")
    jwk = new.public_key().to_partial_json()
    inner_header = {"alg": "ES384", "url": url, "jwk": {**jwk, "use": "sig", "junk": "j" * 2000}}
    inner_payload = {"account": client.kid, "oldKey": client.key.public_key().to_partial_json()}
    inner = signed(client, json.dumps(inner_header).encode(), json.dumps(inner_payload).encode(), key=new)
    reply = await client.post(url, json.loads(inner))
    assert reply.status == 200, reply.text
    assert reply.body["key"] == {"crv": "P-384", "kty": "EC", "x": jwk["x"], "y": jwk["y"]}
    # An inner JWS whose new key is out of policy is badPublicKey (RFC 8555 §7.3.5).
    client.key = new
    bad = {**inner_header, "jwk": {**jwk, "y": jwk["x"]}}
    inner = signed(client, json.dumps(bad).encode(), json.dumps({**inner_payload, "oldKey": jwk}).encode(), key=new)
    await refused(lab, client, url, client.sign(url, json.loads(inner), await client.nonce()), 400, "badPublicKey")
