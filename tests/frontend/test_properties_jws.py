"""Property test: generated JWS and JWK bodies through the frontend's parse-and-verify path
(the app in-process on the lane's database, httpx ASGI transport), with zero 500s.

Structured fuzzing: valid requests of every kind (jwk, kid, keyChange's inner JWS, an External
Account Binding) signed with a fresh nonce, then mutated (a header member replaced by generated
JSON, odd JWKs, broken or non-canonical base64url, envelopes of the wrong shape, duplicate or deep
members), besides arbitrary bytes and JSON. Every answer is < 500 and a problem document when
>= 400.

ACME_RA_HYPOTHESIS_JWS_BODIES sets how many bodies (default 2,000; issue 18 asks for >= 10^5 to
have passed, run once: see docs/security.md "Request parsing"; CI runs the default).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import josepy
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conformance.client import TestAcmeClient, alg_for, b64
from tests.frontend.test_properties import assert_problem, json_values

BODIES = int(os.environ.get("ACME_RA_HYPOTHESIS_JWS_BODIES", "2000"))
RSA_KEY = josepy.JWKRSA(key=rsa.generate_private_key(65537, 2048))
EC384_KEY = josepy.JWKEC(key=ec.generate_private_key(ec.SECP384R1()))
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Placeholders a generated header holds, filled in per request (a fresh nonce, the right URL...).
FRESH_NONCE, RIGHT_URL, OWN_KID, OWN_JWK, RSA_JWK, EC384_JWK = (
    "<fresh nonce>", "<url>", "<kid>", "<own jwk>", "<rsa jwk>", "<ec384 jwk>")
bodies_sent = 0


def deep(depth: int) -> str:
    """A placeholder for JSON nested ``depth`` deep, expanded in the text sent (``expand``): no
    encoder here need recurse that deep."""
    return f"<deep {depth}>"


_DEEP = re.compile(r'"<deep (\d+)>"')


def expand(text: str) -> str:
    def nested(match: re.Match[str]) -> str:
        depth = int(match.group(1))
        return '{"a": [' * (depth // 2) + ("{}" if depth % 2 else "1") + "]}" * (depth // 2)
    return _DEEP.sub(nested, text)


def spoil_b64(text: str, how: str, where: int) -> str:
    """``text`` (base64url) broken one way: padding, a bad character, non-canonical last bits."""
    if how == "pad":
        return text + "="
    if how == "bad char":
        i = where % (len(text) + 1)
        return text[:i] + "+/ .\x00é"[where % 6] + text[i:]
    if how == "flip":
        if not text:
            return "A"
        i = where % len(text)
        return text[:i] + _ALPHABET[(_ALPHABET.index(text[i]) + 1 + where) % 64] + text[i + 1:]
    if how == "low bits" and len(text) % 4 in (2, 3):
        return text[:-1] + _ALPHABET[_ALPHABET.index(text[-1]) | 1 | (where % 4)]
    if how == "truncate":
        return text[: where % (len(text) + 1)]
    return text


b64_texts = st.one_of(
    st.binary(max_size=80).map(b64),
    st.text(alphabet=_ALPHABET + "=+/ \x00é", max_size=80),
    st.tuples(st.binary(min_size=1, max_size=70).map(b64), st.sampled_from(["pad", "bad char", "flip", "low bits"]),
              st.integers(0, 500)).map(lambda t: spoil_b64(*t)),
)
odd_json = st.one_of(
    json_values,
    st.integers(0, 1100).map(deep),
    st.integers(-(2**70), 2**70),
    st.text(max_size=20).map(lambda s: s + "\x00"),
    b64_texts,
)


def uint_b64(value: int) -> str:
    return b64(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _jwk_variants() -> st.SearchStrategy[Any]:
    good_ec = EC384_KEY.public_key().to_partial_json()
    good_rsa = RSA_KEY.public_key().to_partial_json()
    member = st.sampled_from(["kty", "crv", "x", "y", "n", "e", "d", "alg", "use", "kid", "k"])
    replaced = st.tuples(st.sampled_from([good_ec, good_rsa]), member, st.one_of(odd_json, b64_texts)).map(
        lambda t: {**t[0], t[1]: t[2]})
    removed = st.tuples(st.sampled_from([good_ec, good_rsa]), member).map(
        lambda t: {k: v for k, v in t[0].items() if k != t[1]})
    exponents = st.one_of(st.integers(0, 2**40), st.integers(0, 2**5000), st.sampled_from([3, 65537, 65539, 2**16]))
    moduli = st.one_of(st.integers(0, 2**5000), st.integers(2**2047, 2**2048), st.just(int(good_rsa_n())))
    rsa_keys = st.tuples(moduli, exponents).map(lambda t: {"kty": "RSA", "n": uint_b64(t[0]), "e": uint_b64(t[1])})
    ec_keys = st.fixed_dictionaries({
        "kty": st.just("EC"), "crv": st.sampled_from(["P-256", "P-384", "P-521", "P-192", "secp256k1", ""]),
        "x": st.binary(min_size=0, max_size=70).map(b64), "y": st.binary(min_size=0, max_size=70).map(b64)})
    return st.one_of(
        st.sampled_from([OWN_JWK, RSA_JWK, EC384_JWK]), replaced, removed, rsa_keys, ec_keys,
        st.dictionaries(member, odd_json, max_size=5), odd_json)


def good_rsa_n() -> int:
    return int(RSA_KEY.key.public_key().public_numbers().n)


jwk_variants = _jwk_variants()
headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["ES256", "ES384", "ES512", "RS256", "none", "HS256", "PS256", "EdDSA", ""]) | odd_json,
        "nonce": st.just(FRESH_NONCE) | st.just(FRESH_NONCE + "!low bits") | b64_texts | odd_json,
        "url": st.just(RIGHT_URL) | st.text(max_size=40) | odd_json,
        "jwk": jwk_variants,
        "kid": st.just(OWN_KID) | st.just(OWN_KID + "\x00") | st.text(max_size=40) | odd_json,
        "b64": st.booleans() | odd_json,
        "crit": st.lists(st.text(max_size=8), max_size=2) | odd_json,
        "typ": odd_json,
    },
)
# Most examples are near-valid requests: the members a client sends, one of them perhaps odd.
_CLIENT_HEADER = {"alg": "<alg>", "nonce": FRESH_NONCE, "url": RIGHT_URL}
near_valid_headers = st.one_of(
    st.just(_CLIENT_HEADER),
    st.tuples(st.sampled_from(["alg", "nonce", "url", "jwk", "kid"]), odd_json).map(
        lambda t: {**_CLIENT_HEADER, t[0]: t[1]}),
    jwk_variants.map(lambda jwk: {**_CLIENT_HEADER, "jwk": jwk}),
)
payloads = st.one_of(
    st.just(b""), odd_json.map(lambda v: expand(json.dumps(v)).encode()), st.binary(max_size=60),
    st.integers(0, 1100).map(lambda d: expand(json.dumps({"identifiers": deep(d)})).encode()),
    st.sampled_from([b'{"a": 1e400}', b'{"a": "\\ud800"}', b'{"a": 1, "a": 2}', b"\xff", b'{"x": "\\u0000"}',
                     b'{"identifiers": [{"type": "dns", "value": "a.example.org"}]}', b'{"termsOfServiceAgreed": true}',
                     b'{"onlyReturnExisting": true}']),
)
# Each example's request is sent as signed, then once spoiled each of these ways.
ENVELOPE_SPOILS = ["protected", "payload", "signature", "drop", "extra", "compact", "general", "header",
                   "random signature", "array", "number member", "duplicate"]
BODIES_PER_EXAMPLE = 1 + len(ENVELOPE_SPOILS)
# Examples of the generated-request test: each sends BODIES_PER_EXAMPLE bodies; the arbitrary-body
# test sends a tenth of BODIES more.
BODY_SETTINGS = settings(max_examples=max(1, math.ceil(BODIES * 0.9 / BODIES_PER_EXAMPLE)), deadline=None, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                HealthCheck.data_too_large])

endpoints = st.sampled_from(["newAccount", "newOrder", "account", "keyChange", "revokeCert", "order"])


def fill(value: Any, client: TestAcmeClient, nonce: str, url: str) -> Any:
    """Replace the placeholders of a generated header."""
    if isinstance(value, dict):
        return {k: fill(v, client, nonce, url) for k, v in value.items()}
    if value == FRESH_NONCE:
        return nonce
    if value == FRESH_NONCE + "!low bits":
        return spoil_b64(nonce, "low bits", 1)
    if value == RIGHT_URL:
        return url
    if isinstance(value, str) and value.startswith(OWN_KID):
        return (client.kid or "") + value[len(OWN_KID):]
    if value == OWN_JWK:
        return client.key.public_key().to_partial_json()
    if value == RSA_JWK:
        return RSA_KEY.public_key().to_partial_json()
    if value == EC384_JWK:
        return EC384_KEY.public_key().to_partial_json()
    return value


def signing_key(client: TestAcmeClient, header: dict[str, Any]) -> josepy.JWK:
    jwk = header.get("jwk")
    if jwk == RSA_KEY.public_key().to_partial_json():
        return RSA_KEY
    if jwk == EC384_KEY.public_key().to_partial_json():
        return EC384_KEY
    return client.key


def envelope(protected: str, payload: str, signature: str, spoil: str, where: int) -> bytes:
    body: Any = {"protected": protected, "payload": payload, "signature": signature}
    if spoil in ("protected", "payload", "signature"):
        body[spoil] = spoil_b64(body[spoil], ["pad", "bad char", "flip", "low bits", "truncate"][where % 5], where)
    elif spoil == "drop":
        del body[["protected", "payload", "signature"][where % 3]]
    elif spoil == "extra":
        body["x"] = where
    elif spoil == "compact":
        return f"{protected}.{payload}.{signature}".encode()
    elif spoil == "general":
        body = {"payload": payload, "signatures": [{"protected": protected, "signature": signature}] * (where % 3)}
    elif spoil == "header":
        body["header"] = {"kid": "x"}
    elif spoil == "random signature":
        body["signature"] = b64(where.to_bytes(8, "big") * 8)
    elif spoil == "array":
        body = [body]
    elif spoil == "number member":
        body[["protected", "payload", "signature"][where % 3]] = where
    elif spoil == "duplicate":
        text = json.dumps(body)
        return (text[:-1] + f', "signature": "{signature[:-2]}"}}').encode()
    return json.dumps(body).encode()


def protected_text(header: dict[str, Any], duplicate: str | None) -> bytes:
    text = expand(json.dumps(header, ensure_ascii=False))
    if duplicate and len(header) > 0:
        text = text[:-1] + f', "{duplicate}": "ES256"}}'
    return text.encode(errors="surrogatepass")


def inner_key_change(client: TestAcmeClient, url: str, header: dict[str, Any], payload: bytes) -> bytes:
    """keyChange's payload: an inner JWS (generated header, no nonce) signed by a new key."""
    inner = {k: v for k, v in header.items() if k != "nonce"}
    inner.setdefault("jwk", EC384_KEY.public_key().to_partial_json())
    inner_text = protected_text(inner, None)
    # oldKey is not the account's: a key change never succeeds (the account keeps its key).
    inner_payload = payload if payload else json.dumps(
        {"account": client.kid, "oldKey": RSA_KEY.public_key().to_partial_json()}).encode()
    key = signing_key(client, inner)
    alg = alg_for(key)
    signing_input = f"{b64(inner_text)}.{b64(inner_payload)}".encode()
    return json.dumps({"protected": b64(inner_text), "payload": b64(inner_payload),
                       "signature": b64(alg.sign(key.key, signing_input))}).encode()


def eab_binding(url: str, header: dict[str, Any]) -> dict[str, Any]:
    eab_header = {"alg": "HS256", "kid": "eab-key", "url": url, **{k: v for k, v in header.items() if k != "jwk"}}
    return {"protected": b64(protected_text(eab_header, None)),
            "payload": b64(json.dumps(EC384_KEY.public_key().to_partial_json()).encode()),
            "signature": b64(b"\x01" * 32)}


async def send(http: httpx.AsyncClient, url: str, body: bytes) -> None:
    global bodies_sent
    response = await http.post(url, content=body, headers={"Content-Type": "application/jose+json"})
    bodies_sent += 1
    assert_problem(response)


@BODY_SETTINGS
@given(
    header=st.one_of(near_valid_headers, near_valid_headers, headers),
    payload=payloads,
    endpoint=endpoints,
    use_jwk=st.booleans(),
    where=st.integers(0, 10_000),
    duplicate=st.none() | st.none() | st.sampled_from(["alg", "nonce", "url", "kid"]),
    wrap=st.sampled_from(["none", "none", "inner", "eab"]),
)
async def test_generated_jws_bodies_are_never_a_500(
    account: TestAcmeClient, header: dict[str, Any], payload: bytes, endpoint: str, use_jwk: bool, where: int, duplicate: str | None, wrap: str,
) -> None:
    client = account
    state = client.http.app.state.ra  # type: ignore[attr-defined]
    url = {"account": client.kid, "order": (client.kid or "").replace("/account/", "/order/")}.get(
        endpoint) or client.directory[endpoint]
    header = fill(header, client, state.nonces.issue(), url)
    if "jwk" not in header and "kid" not in header:
        header["jwk" if use_jwk else "kid"] = client.key.public_key().to_partial_json() if use_jwk else client.kid
    key = signing_key(client, header)
    if header.get("alg") == "<alg>":
        header["alg"] = alg_for(key).name
    if wrap == "inner":
        payload = inner_key_change(client, url, header, payload)
    elif wrap == "eab":
        payload = json.dumps({"termsOfServiceAgreed": True, "externalAccountBinding": eab_binding(url, header)}).encode()
    protected_b64 = b64(protected_text(header, duplicate))
    payload_b64 = b64(payload)
    try:
        signature = b64(alg_for(key).sign(key.key, f"{protected_b64}.{payload_b64}".encode()))
    except Exception:  # noqa: BLE001 - a key the header names that cannot sign this: any signature
        signature = b64(b"\x02" * 64)
    for spoil in ("none", *ENVELOPE_SPOILS):
        await send(client.http, url, envelope(protected_b64, payload_b64, signature, spoil, where))


@settings(max_examples=max(1, math.ceil(BODIES / 20)), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.one_of(st.binary(max_size=400), odd_json.map(lambda v: expand(json.dumps(v)).encode()),
                      st.dictionaries(st.sampled_from(["protected", "payload", "signature", "header", "signatures"]),
                                      b64_texts | odd_json, max_size=4).map(lambda v: expand(json.dumps(v)).encode())))
async def test_arbitrary_bodies_are_never_a_500(account: TestAcmeClient, body: bytes) -> None:
    for name in ("newAccount", "newOrder"):
        await send(account.http, account.directory[name], body)


@pytest.fixture(scope="module", autouse=True)
def report_bodies_sent() -> Iterator[None]:
    """The figure issue 18 asks for: how many bodies went through (printed with -s)."""
    started = time.monotonic()
    yield
    print(f"\nJWS property tests: {bodies_sent} bodies, zero 500s, {time.monotonic() - started:.0f} s")

