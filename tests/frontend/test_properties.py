"""Property tests: hostile input anywhere in a request gives a problem document, never a 500.

ACME_RA_HYPOTHESIS_EXAMPLES sets the examples per property (CI: enough for >= 10,000 in all).
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conformance.client import TestAcmeClient, b64

EXAMPLES = int(os.environ.get("ACME_RA_HYPOTHESIS_EXAMPLES", "2500"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def assert_problem(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.text
        body = response.json()
        assert body["type"].startswith("urn:ietf:params:acme:error:")
        assert body["status"] == response.status_code


@PROPERTY_SETTINGS
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
async def test_any_body_is_a_problem(account: TestAcmeClient, body: bytes) -> None:
    for url in (account.directory["newAccount"], account.directory["newOrder"]):
        response = await account.http.post(url, content=body, headers={"Content-Type": "application/jose+json"})
        assert_problem(response)


@PROPERTY_SETTINGS
@given(
    protected=st.dictionaries(
        st.sampled_from(["alg", "nonce", "url", "jwk", "kid", "b64", "crit", "typ"]), json_values, max_size=6
    ),
    payload=json_values,
)
async def test_any_protected_header_is_a_problem(account: TestAcmeClient, protected: dict[str, Any], payload: Any) -> None:
    url = account.directory["newOrder"]
    protected_b64 = b64(json.dumps(protected).encode())
    payload_b64 = b64(json.dumps(payload).encode())
    body = json.dumps({"protected": protected_b64, "payload": payload_b64, "signature": b64(b"\x01" * 64)}).encode()
    response = await account.http.post(url, content=body, headers={"Content-Type": "application/jose+json"})
    assert_problem(response)
    assert response.status_code >= 400


@PROPERTY_SETTINGS
@given(payload=json_values, resource=st.sampled_from(["newOrder", "account", "newAccount"]))
async def test_any_signed_payload_is_handled(account: TestAcmeClient, payload: Any, resource: str) -> None:
    url = account.kid if resource == "account" else account.directory[resource]
    assert url
    reply = await account.post(url, payload, use_jwk=resource == "newAccount")
    assert reply.status < 500, reply.text
    if reply.status >= 400:
        assert reply.headers["content-type"] == "application/problem+json"


identifier_values = st.text(alphabet="abcxyz019-.*:_%/ \u00e9", max_size=30) | st.from_regex(
    r"\A(\*\.)?([a-z0-9-]{1,10}\.){1,3}[a-z]{2,5}\Z"
)


@PROPERTY_SETTINGS
@given(
    identifiers=st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["dns", "ip", "email", ""]), "value": identifier_values}),
        min_size=0, max_size=4,
    )
)
async def test_any_identifiers_give_an_order_or_a_problem(account: TestAcmeClient, identifiers: list[dict[str, str]]) -> None:
    reply = await account.post(account.directory["newOrder"], {"identifiers": identifiers})
    assert reply.status in (201, 400, 429), reply.text
    if reply.status == 400:
        for sub in reply.body.get("subproblems", []):
            assert "identifier" in sub
