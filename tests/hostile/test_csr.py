"""Hostile CSRs at finalize, through the real services (as `make dev` runs them): the exact status
and problem type of each refusal, quickly, the order still `ready` afterwards, the services still
up; and what real clients send (subject attributes other than the CN, must-staple) issues.
The policy: docs/security.md "CSR policy"; its property test: frontend/test_csr_policy.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conformance.client import TestAcmeClient, b64
from tests.frontend.test_csr_policy import key_usage, rsa_key_with_exponent
from tests.hostile.conftest import Timer, assert_still_up
from tests.support.lab import TEST_ZONE, Lab

pytestmark = pytest.mark.integration

# How long the validator may take to validate a dns-01 challenge (seconds).
VALIDATION_DEADLINE = 30


@pytest.fixture
async def account(lab: Lab) -> AsyncIterator[TestAcmeClient]:
    context = ssl.create_default_context(cafile=str(lab.ca_bundle))
    async with httpx.AsyncClient(verify=context, timeout=30) as http:
        client = TestAcmeClient(http, lab.directory_url)
        await client.load_directory()
        assert (await client.register(contact=["mailto:hostile@example.org"])).status == 201
        yield client


async def ready_order(lab: Lab, account: TestAcmeClient, name: str) -> dict[str, Any]:
    """An order for ``name`` made ready by a real dns-01 validation (the test DNS server)."""
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
    assert reply.status == 201, reply.text
    order_url = reply.location
    authz = await account.post(reply.body["authorizations"][0])
    challenge = next(c for c in authz.body["challenges"] if c["type"] == "dns-01")
    digest = hashlib.sha256(account.key_authorization(challenge["token"]).encode()).digest()
    record = lab.txt_dir / f"_acme-challenge.{name}"
    record.mkdir(parents=True, exist_ok=True)
    (record / "value").write_text(b64(digest))
    try:
        assert (await account.post(challenge["url"], {})).status == 200
        for _ in range(VALIDATION_DEADLINE * 4):
            order = await account.post(order_url or "")
            if order.body["status"] != "pending":
                break
            await asyncio.sleep(0.25)
    finally:  # the suite's DNS server is shared: other tests check that no record is left
        shutil.rmtree(record)
    assert order.body["status"] == "ready", order.text
    return {**order.body, "url": order_url}


def csr(name: str, *extensions: tuple[x509.ExtensionType, bool], key: Any = None,
        subject: list[x509.NameAttribute[Any]] | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject or []))
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
    for value, critical in extensions:
        builder = builder.add_extension(value, critical)
    der = builder.sign(key or ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    return b64(der.public_bytes(serialization.Encoding.DER))


def unknown_key_algorithm(name: str) -> str:
    der = b64_decode(csr(name))
    return b64(der.replace(bytes.fromhex("06072a8648ce3d0201"), bytes.fromhex("06072a8648ce3d0209")))


def b64_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def test_hostile_csrs_are_bad_csr_naming_what_is_wrong(lab: Lab, account: TestAcmeClient) -> None:
    name = f"csr-{uuid.uuid4().hex[:8]}.{TEST_ZONE}"
    order = await ready_order(lab, account, name)
    cases = {
        # issue 18: a 500 with a stack trace before
        "unknown key algorithm": (unknown_key_algorithm(name), "key algorithm is not supported"),
        "CA:TRUE": (csr(name, (x509.BasicConstraints(ca=True, path_length=None), True)), "CA:TRUE"),
        "keyCertSign": (csr(name, (key_usage(digital_signature=True, key_cert_sign=True), True)), "keyCertSign"),
        "codeSigning": (csr(name, (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)), "codeSigning"),
        "anyExtendedKeyUsage": (csr(name, (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]), False)),
                                "anyExtendedKeyUsage"),
        "unknown critical extension": (
            csr(name, (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7"), b"\x05\x00"), True)),
            "critical extension 1.3.6.1.4.1.99999.7"),
        "huge RSA exponent": (csr(name, key=rsa_key_with_exponent(2**64 + 1)), "exponent"),
        "not DER": (b64(b"\x30\x82\xff\xff" + b"\x00" * 40), "not a DER-encoded"),
        "another name": (csr(f"other.{TEST_ZONE}"), "not in the order"),
    }
    for case, (body, named) in cases.items():
        with Timer() as timer:
            reply = await account.post(order["finalize"], {"csr": body})
        assert reply.status == 400 and reply.problem_type == "badCSR", (case, reply.text)
        assert named in reply.body["detail"], (case, reply.body)
        assert reply.headers["replay-nonce"]
        timer.assert_quick()
    assert (await account.post(order["url"])).body["status"] == "ready"
    assert_still_up(lab)


async def test_what_real_clients_send_issues(lab: Lab, account: TestAcmeClient) -> None:
    """acme.sh's O=acme.sh subject (IP-address CSRs) with its serverAuth/clientAuth EKU, and
    certbot's --must-staple: accepted, and the certificate issues."""
    name = f"csr-{uuid.uuid4().hex[:8]}.{TEST_ZONE}"
    order = await ready_order(lab, account, name)
    body = csr(name,
               (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
               (x509.BasicConstraints(ca=False, path_length=None), False),
               (x509.TLSFeature([x509.TLSFeatureType.status_request]), False),
               subject=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme.sh"),
                        x509.NameAttribute(NameOID.COMMON_NAME, name)])
    with Timer() as timer:
        reply = await account.post(order["finalize"], {"csr": body})
    timer.assert_quick()
    assert reply.status == 200 and reply.body["status"] in ("processing", "valid"), reply.text
    for _ in range(VALIDATION_DEADLINE * 4):
        done = await account.post(order["url"])
        if done.body["status"] != "processing":
            break
        await asyncio.sleep(0.25)
    assert done.body["status"] == "valid", done.text
    chain = await account.post(done.body["certificate"])
    leaf = x509.load_pem_x509_certificates(chain.text.encode())[0]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [name]
    assert_still_up(lab)
