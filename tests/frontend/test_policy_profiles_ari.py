"""Identifier policy, profiles (draft-ietf-acme-profiles) and ARI (RFC 9773) in the frontend."""

from __future__ import annotations

import datetime as dt
import urllib.parse

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import update

from acme_ra.db.lifecycle import store_certificate
from acme_ra.db.models import Order
from acme_ra.protocol.identifiers import Identifier
from acme_ra.protocol.policy import Policy, parse_rules
from tests.conformance.client import TestAcmeClient, b64


def ident(value: str) -> Identifier:
    return Identifier("ip" if value[0].isdigit() else "dns", value)


@pytest.mark.parametrize(
    ("policy", "name", "allowed"),
    [
        (Policy(allow=[".example.org"]), "www.example.org", True),
        (Policy(allow=[".example.org"]), "example.org", True),
        (Policy(allow=[".example.org"]), "example.com", False),
        (Policy(allow=[".example.org"]), "badexample.org", False),
        (Policy(deny=["secret.example.org"]), "secret.example.org", False),
        (Policy(allow=[".example.org"], deny=[".hr.example.org"]), "x.hr.example.org", False),
        (Policy(wildcards=False), "*.example.org", False),
        (Policy(allow=["10.0.0.0/8"]), "10.1.2.3", True),
        (Policy(allow=["10.0.0.0/8"]), "192.0.2.1", False),
        # step-ca's form: every name under example.org, not example.org itself
        (Policy(allow=["*.example.org"]), "www.example.org", True),
        (Policy(allow=["*.example.org"]), "a.b.example.org", True),
        (Policy(allow=["*.example.org"]), "example.org", False),
        (Policy(allow=["*.example.org"]), "badexample.org", False),
        (Policy(allow=["*.example.org"]), "*.example.org", True),
        (Policy(allow=["*.example.org"]), "*.www.example.org", True),
        (Policy(allow=["*.example.org"]), "*.org", False),
        (Policy(allow=[".example.org"], deny=["*.hr.example.org"]), "x.hr.example.org", False),
        (Policy(allow=[".example.org"], deny=["*.hr.example.org"]), "hr.example.org", True),
    ],
)
def test_policy_rules(policy: Policy, name: str, allowed: bool) -> None:
    assert (policy.refusal(ident(name)) is None) is allowed


@pytest.mark.parametrize("rule", ["foo.*.example.org", "*example.org", "*.*.example.org", "*.", "*"])
def test_a_star_anywhere_but_the_first_label_is_refused_in_one_line(rule: str) -> None:
    with pytest.raises(ValueError, match=r"^policy rule .*: '\*' only as the whole first label \("):
        parse_rules(f".example.edu, {rule}")
    assert parse_rules("*.Example.org, .example.edu") == ["*.example.org", ".example.edu"]


async def test_directory_offers_profiles_and_renewal_info(client: TestAcmeClient) -> None:
    assert client.directory["meta"]["profiles"] == {"tlsserver": "TLS server certificate for the names in the order"}
    assert client.directory["renewalInfo"] == "https://ra.test/acme/acme/renewal-info"


async def test_order_gets_default_profile_and_unknown_is_refused(account: TestAcmeClient) -> None:
    ok = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "p.example.org"}]})
    assert ok.body["profile"] == "tlsserver"
    bad = await account.post(
        account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "p.example.org"}], "profile": "nope"}
    )
    assert bad.status == 400 and bad.problem_type == "invalidProfile"


async def test_global_policy_refuses_with_subproblems(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    saved = state.policy
    state.policy = Policy(allow=[".example.org"])
    try:
        reply = await account.post(
            account.directory["newOrder"],
            {"identifiers": [{"type": "dns", "value": "a.example.org"}, {"type": "dns", "value": "a.example.com"},
                             {"type": "dns", "value": "b.example.net"}]},
        )
    finally:
        state.policy = saved
    assert reply.status == 400 and reply.problem_type == "rejectedIdentifier"
    assert [s["identifier"]["value"] for s in reply.body["subproblems"]] == ["a.example.com", "b.example.net"]


def issue_test_certificate(names: list[str]) -> str:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test ca")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM).decode()


async def issued_order(account: TestAcmeClient, http: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """An order of this account turned valid as the signer would; returns (certID, PEM)."""
    reply = await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
    order_id = (reply.location or "").rsplit("/", 1)[1]
    state = http.app.state.ra  # type: ignore[attr-defined]
    pem = issue_test_certificate([name])
    cert = x509.load_pem_x509_certificate(pem.encode())
    async with state.db.transaction() as session:
        await session.execute(update(Order).where(Order.id == order_id).values(status="processing"))
        assert await store_certificate(session, order_id, pem, format(cert.serial_number, "x"),
                                       cert.not_valid_before_utc, cert.not_valid_after_utc)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big")
    assert aki is not None
    return f"{b64(aki)}.{b64(serial)}", pem


async def test_renewal_info_window_and_replaces(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    cert_id, _pem = await issued_order(account, http, "ari.example.org")
    response = await http.get(f"{account.directory['renewalInfo']}/{cert_id}")
    assert response.status_code == 200, response.text
    window = response.json()["suggestedWindow"]
    assert window["start"] < window["end"]
    assert int(response.headers["retry-after"]) > 0
    assert (await http.get(f"{account.directory['renewalInfo']}/{cert_id}=")).status_code == 400
    # An unknown issuer is malformed, an unknown serial of a known issuer not found (X2).
    assert (await http.get(f"{account.directory['renewalInfo']}/AAAA.AQ")).status_code == 400

    first = await account.post(account.directory["newOrder"],
                               {"identifiers": [{"type": "dns", "value": "ari.example.org"}], "replaces": cert_id})
    assert first.status == 201 and first.body["replaces"] == cert_id
    second = await account.post(account.directory["newOrder"],
                                {"identifiers": [{"type": "dns", "value": "ari.example.org"}], "replaces": cert_id})
    assert second.status == 409 and second.problem_type == "alreadyReplaced"
    unrelated = await account.post(account.directory["newOrder"],
                                   {"identifiers": [{"type": "dns", "value": "other.example.org"}], "replaces": cert_id})
    assert unrelated.problem_type == "malformed"


async def test_certificate_download_with_alternate_chains(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    from sqlalchemy import select

    from acme_ra.db.models import Certificate

    cert_id, pem = await issued_order(account, http, "alt.example.org")
    state = http.app.state.ra  # type: ignore[attr-defined]
    async with state.db.transaction() as session:
        row = (await session.execute(select(Certificate).where(Certificate.ari_cert_id == cert_id))).scalar_one()
        row.alternate_chains_pem = [pem + "ALT-ONE\n"]
        url = account.directory["newOrder"].replace("new-order", f"certificate/{row.id}")
    main = await account.post(url)
    assert main.status == 200 and main.headers["content-type"] == "application/pem-certificate-chain"
    assert main.text == pem
    assert f'<{url}/1>;rel="alternate"' in main.headers["link"]
    alternate = await account.post(f"{url}/1")
    assert alternate.text.endswith("ALT-ONE\n")
    assert (await account.post(f"{url}/2")).status == 404
    # "²".isdigit() is true and int("²") fails: an alternate's index is ASCII digits only.
    # (The JWS names the decoded URL, as the frontend compares it.)
    for odd in ("%C2%B2", "%D9%A1", "-1", "0"):
        signed = account.sign(f"{url}/{urllib.parse.unquote(odd)}", "", await account.nonce())
        assert (await account.post_raw(f"{url}/{odd}", signed)).status == 404
