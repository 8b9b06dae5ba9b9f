"""dns-persist-01 and dns-account-01 end to end (issue 21), through the real services with the
tests' own ACME client and the test DNS server: what the frontend advertises, a standing record
with and without policy=wildcard (a wildcard order, a name below the record), a record naming
another account or past its persistUntil refused, the authorization's lifetime bounded by
persistUntil, and a dns-account-01 validation; each valid order then issues.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from cryptography import x509

from acme_ra_validator.dns_account01 import validation_name
from tests.conformance.client import TestAcmeClient, b64, make_csr
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, Lab
from tests.support.persist_lab import CAA_IDENTITY, ISSUER
from tests.support.persist_lab import persist_lab as running_persist_lab

pytestmark = pytest.mark.integration

OTHER_ISSUER = "other-ca.example"
# How long a validation or an issuance may take on a busy machine (seconds).
DEADLINE_SECONDS = 60


@pytest.fixture(scope="module")
def persist_lab(test_dns: TestDnsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_persist_lab(test_dns, tmp_path_factory.mktemp("persist-lab")) as lab:
        yield lab


@pytest.fixture
async def account(persist_lab: Lab) -> AsyncIterator[TestAcmeClient]:
    context = ssl.create_default_context(cafile=str(persist_lab.ca_bundle))
    async with httpx.AsyncClient(verify=context, timeout=30) as http:
        client = TestAcmeClient(http, persist_lab.directory_url)
        await client.load_directory()
        assert (await client.register()).status == 201
        yield client


@contextmanager
def txt(lab: Lab, name: str, *values: str) -> Iterator[None]:
    """TXT records at ``name`` on the test DNS server while the block runs."""
    folder = lab.txt_dir / name.lower()
    folder.mkdir(parents=True)
    for index, value in enumerate(values):
        (folder / f"v{index}").write_text(value)
    try:
        yield
    finally:  # the suite's DNS server is shared: other tests check that no record is left
        shutil.rmtree(folder)


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}.{TEST_ZONE}"


async def new_order(account: TestAcmeClient, *names: str) -> tuple[str, dict[str, Any]]:
    reply = await account.post(account.directory["newOrder"],
                               {"identifiers": [{"type": "dns", "value": n} for n in names]})
    assert reply.status == 201, reply.text
    assert reply.location
    return reply.location, reply.body


async def challenge_of(account: TestAcmeClient, authz_url: str, kind: str) -> dict[str, Any]:
    authz = await account.post(authz_url)
    return dict(next(c for c in authz.body["challenges"] if c["type"] == kind))


async def answer(account: TestAcmeClient, authz_url: str, kind: str) -> dict[str, Any]:
    """POST the authorization's ``kind`` challenge; the authorization once settled."""
    challenge = await challenge_of(account, authz_url, kind)
    assert (await account.post(challenge["url"], {})).status == 200
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        authz = await account.post(authz_url)
        if authz.body["status"] != "pending":
            return dict(authz.body)
        await asyncio.sleep(0.25)
    pytest.fail(f"{authz_url} still pending after {DEADLINE_SECONDS} s")


def problem(authz: dict[str, Any], kind: str) -> dict[str, Any]:
    return dict(next(c for c in authz["challenges"] if c["type"] == kind)["error"])


async def issue(account: TestAcmeClient, order_url: str, names: list[str]) -> x509.Certificate:
    order = await account.post(order_url)
    assert order.body["status"] == "ready", order.text
    der, _ = make_csr(names)
    reply = await account.post(order.body["finalize"], {"csr": b64(der)})
    assert reply.status == 200, reply.text
    deadline = time.monotonic() + DEADLINE_SECONDS
    while (order := await account.post(order_url)).body["status"] == "processing" and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    assert order.body["status"] == "valid", order.text
    pem = await account.post(order.body["certificate"])
    leaf = x509.load_pem_x509_certificates(pem.text.encode())[0]
    assert sorted(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                  .get_values_for_type(x509.DNSName)) == sorted(names)
    return leaf


def record(account: TestAcmeClient, *extra: str, issuer: str = ISSUER, account_url: str | None = None) -> str:
    return "; ".join([issuer, f"accounturi={account_url or account.kid}", *extra])


async def test_what_the_frontend_advertises(account: TestAcmeClient) -> None:
    meta = account.directory["meta"]
    assert meta["caaIdentities"] == [CAA_IDENTITY, ISSUER]  # acme.sh takes the issuer from here
    assert meta["issuerDomainNames"] == [ISSUER]
    assert meta["accountHashPrefix"].startswith(account.directory_url.removesuffix("/directory"))
    _, order = await new_order(account, unique("adv"))
    persist = await challenge_of(account, order["authorizations"][0], "dns-persist-01")
    assert persist["issuerDomainNames"] == persist["issuer-domain-names"] == [ISSUER]
    assert "token" not in persist
    assert (await challenge_of(account, order["authorizations"][0], "dns-account-01"))["token"]


async def test_dns_persist01_for_the_name_itself_issues(persist_lab: Lab, account: TestAcmeClient) -> None:
    name = unique("persist")
    order_url, order = await new_order(account, name)
    # Another CA's record beside ours is ignored (-02 §4.3).
    with txt(persist_lab, f"_validation-persist.{name}", record(account), record(account, issuer=OTHER_ISSUER)):
        authz = await answer(account, order["authorizations"][0], "dns-persist-01")
    assert authz["status"] == "valid", authz
    await issue(account, order_url, [name])


async def test_policy_wildcard_covers_the_wildcard_and_names_below(persist_lab: Lab, account: TestAcmeClient) -> None:
    zone = unique("zone")
    names = [f"*.{zone}", f"www.{zone}"]
    order_url, order = await new_order(account, *names)
    with txt(persist_lab, f"_validation-persist.{zone}", record(account, "policy=WildCard")):
        for authz_url in order["authorizations"]:
            authz = await answer(account, authz_url, "dns-persist-01")
            assert authz["status"] == "valid", authz
    await issue(account, order_url, names)


async def test_without_policy_wildcard_the_wildcard_is_refused(persist_lab: Lab, account: TestAcmeClient) -> None:
    zone = unique("nowild")
    _, order = await new_order(account, f"*.{zone}")
    with txt(persist_lab, f"_validation-persist.{zone}", record(account)):
        authz = await answer(account, order["authorizations"][0], "dns-persist-01")
    assert authz["status"] == "invalid"
    error = problem(authz, "dns-persist-01")
    assert error["type"].endswith(":unauthorized") and "policy=wildcard" in error["detail"], error


async def test_a_record_for_another_account_is_refused(persist_lab: Lab, account: TestAcmeClient) -> None:
    name = unique("other")
    other_account = account.kid.rsplit("/", 1)[0] + "/someone-else"  # type: ignore[union-attr]
    _, order = await new_order(account, name)
    with txt(persist_lab, f"_validation-persist.{name}", record(account, account_url=other_account)):
        authz = await answer(account, order["authorizations"][0], "dns-persist-01")
    assert authz["status"] == "invalid"
    error = problem(authz, "dns-persist-01")
    assert error["type"].endswith(":unauthorized") and "another account" in error["detail"], error


async def test_persist_until_past_is_refused_and_future_bounds_the_authz(persist_lab: Lab,
                                                                          account: TestAcmeClient) -> None:
    past, future = unique("past"), unique("future")
    _, order = await new_order(account, past)
    with txt(persist_lab, f"_validation-persist.{past}", record(account, f"persistUntil={int(time.time()) - 60}")):
        authz = await answer(account, order["authorizations"][0], "dns-persist-01")
    assert authz["status"] == "invalid" and "expired" in problem(authz, "dns-persist-01")["detail"], authz
    until = int(time.time()) + 3600
    _, order = await new_order(account, future)
    with txt(persist_lab, f"_validation-persist.{future}", record(account, f"persistUntil={until}")):
        authz = await answer(account, order["authorizations"][0], "dns-persist-01")
    assert authz["status"] == "valid", authz
    expires = time.mktime(time.strptime(authz["expires"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert expires <= until, (authz["expires"], until)


async def test_hashed_accounturi_of_draft_02(persist_lab: Lab, account: TestAcmeClient) -> None:
    """-02 §4.1: <accountHashPrefix>sha-256/<base64url SHA-256(len || domain || thumbprint || URL)>."""
    name = unique("hashed")
    assert account.kid
    thumbprint = b64(account.key.thumbprint()).encode()
    digest = hashlib.sha256(bytes([len(name)]) + name.encode() + thumbprint + account.kid.encode()).digest()
    hashed = f"{account.directory['meta']['accountHashPrefix']}sha-256/{b64(digest)}"
    order_url, order = await new_order(account, name)
    with txt(persist_lab, f"_validation-persist.{name}", record(account, account_url=hashed)):
        authz = await answer(account, order["authorizations"][0], "dns-persist-01")
    assert authz["status"] == "valid", authz
    await issue(account, order_url, [name])


async def test_dns_account01_issues(persist_lab: Lab, account: TestAcmeClient) -> None:
    name = unique("account")
    order_url, order = await new_order(account, name)
    challenge = await challenge_of(account, order["authorizations"][0], "dns-account-01")
    value = b64(hashlib.sha256(account.key_authorization(challenge["token"]).encode()).digest())
    assert account.kid
    record_name = validation_name(name, account.kid)
    assert record_name.startswith("_") and len(record_name.split(".")[0]) == 17
    with txt(persist_lab, record_name, value):
        authz = await answer(account, order["authorizations"][0], "dns-account-01")
    assert authz["status"] == "valid", authz
    await issue(account, order_url, [name])

