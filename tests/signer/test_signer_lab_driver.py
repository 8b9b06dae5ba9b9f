"""The lab driver: issuance from real CSRs (profile, SANs, chain), rejections, revoke, registry."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from acme_ra.config import Settings
from acme_ra_signer.upstream import (
    IssueRequest,
    UpstreamRejected,
    make_driver,
)
from acme_ra_signer.upstream.lab import LabDriver

from .conftest import identifiers, make_csr, verify_chain


@pytest.fixture
def driver(settings: Settings) -> LabDriver:
    made = make_driver(settings)
    assert isinstance(made, LabDriver)
    return made


def request_for(names: list[str], csr: bytes | None = None) -> IssueRequest:
    return IssueRequest(order_id="order-1", csr_der=csr or make_csr(names), identifiers=identifiers(*names))


def sans_of(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in ext]


async def test_issues_a_chain_that_verifies_to_the_root(driver: LabDriver, settings: Settings) -> None:
    names = ["www.example.test", "example.test", "192.0.2.7", "2001:db8::7"]
    issued = await driver.issue(request_for(names))

    blocks = issued.chain_pem.count("-----BEGIN CERTIFICATE-----")
    assert blocks == 2 and "PRIVATE KEY" not in issued.chain_pem
    leaf, intermediate = x509.load_pem_x509_certificates(issued.chain_pem.encode())
    assert intermediate == driver.ca.intermediate
    assert sans_of(leaf) == names
    for name in names:
        path = verify_chain(issued.chain_pem, driver.ca.root, name)
        assert path[-1] == driver.ca.root
    assert issued.serial_hex == format(leaf.serial_number, "x") == issued.serial_hex.lower()
    assert issued.not_before == leaf.not_valid_before_utc and issued.not_before.tzinfo is not None
    assert issued.not_after == leaf.not_valid_after_utc
    now = dt.datetime.now(dt.UTC)
    assert now - dt.timedelta(minutes=2) < issued.not_before < now
    expected_end = now + dt.timedelta(days=settings.cert_lifetime_days)
    assert abs(issued.not_after - expected_end) < dt.timedelta(minutes=1)


async def test_leaf_profile_for_an_ecdsa_key(driver: LabDriver) -> None:
    issued = await driver.issue(request_for(["a.example.test", "b.example.test"]))
    leaf = x509.load_pem_x509_certificates(issued.chain_pem.encode())[0]

    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.example.test"
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in list(eku)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = driver.ca.intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert leaf.serial_number > 0


async def test_rsa_keys_also_get_key_encipherment(driver: LabDriver) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issued = await driver.issue(request_for(["rsa.example.test"], make_csr(["rsa.example.test"], key)))
    leaf = x509.load_pem_x509_certificates(issued.chain_pem.encode())[0]

    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    verify_chain(issued.chain_pem, driver.ca.root, "rsa.example.test")


async def test_sans_come_from_the_order_identifiers_not_the_csr(driver: LabDriver) -> None:
    csr = make_csr(["other.example.test", "extra.example.test"])
    issued = await driver.issue(request_for(["ordered.example.test"], csr))
    leaf = x509.load_pem_x509_certificates(issued.chain_pem.encode())[0]

    assert sans_of(leaf) == ["ordered.example.test"]


async def test_wildcard_and_long_names(driver: LabDriver) -> None:
    long_name = ("x" * 60) + ".example.test"  # 73 characters: too long for a commonName
    issued = await driver.issue(request_for([long_name, "*.example.test"]))
    leaf = x509.load_pem_x509_certificates(issued.chain_pem.encode())[0]

    assert sans_of(leaf) == [long_name, "*.example.test"]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "*.example.test"
    verify_chain(issued.chain_pem, driver.ca.root, "host.example.test")


async def test_ip_only_order_has_an_empty_subject_and_critical_san(driver: LabDriver) -> None:
    issued = await driver.issue(request_for(["198.51.100.1"]))
    leaf = x509.load_pem_x509_certificates(issued.chain_pem.encode())[0]

    assert len(leaf.subject) == 0
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.51.100.1")]
    verify_chain(issued.chain_pem, driver.ca.root, "198.51.100.1")


async def test_garbage_csr_is_rejected_as_bad_csr(driver: LabDriver) -> None:
    with pytest.raises(UpstreamRejected) as caught:
        await driver.issue(request_for(["a.example.test"], b"\x30\x03not a csr"))
    assert caught.value.problem["type"] == "badCSR"


async def test_csr_with_a_broken_signature_is_rejected(driver: LabDriver) -> None:
    csr = bytearray(make_csr(["a.example.test"]))
    csr[-3] ^= 0xFF  # inside the ECDSA signature
    with pytest.raises(UpstreamRejected) as caught:
        await driver.issue(request_for(["a.example.test"], bytes(csr)))
    assert caught.value.problem["type"] == "badCSR"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), id="rsa1024"),
        pytest.param(lambda: ed25519.Ed25519PrivateKey.generate(), id="ed25519"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), id="secp256k1"),
    ],
)
async def test_unsupported_keys_are_rejected_as_bad_public_key(driver: LabDriver, key: object) -> None:
    private = key()  # type: ignore[operator]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(private, None if isinstance(private, ed25519.Ed25519PrivateKey) else hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(UpstreamRejected) as caught:
        await driver.issue(request_for(["a.example.test"], csr))
    assert caught.value.problem["type"] == "badPublicKey"


async def test_unsupported_identifier_type_is_rejected(driver: LabDriver) -> None:
    request = IssueRequest(
        order_id="o", csr_der=make_csr(["a.example.test"]), identifiers=[{"type": "email", "value": "a@b"}]
    )
    with pytest.raises(UpstreamRejected) as caught:
        await driver.issue(request)
    assert caught.value.problem["type"] == "rejectedIdentifier"


async def test_revoke_accepts_its_own_certificates_only(driver: LabDriver, settings: Settings) -> None:
    issued = await driver.issue(request_for(["a.example.test"]))
    leaf = x509.load_pem_x509_certificates(issued.chain_pem.encode())[0]
    await driver.revoke(leaf.public_bytes(serialization.Encoding.DER), 1)

    with pytest.raises(UpstreamRejected) as caught:
        await driver.revoke(driver.ca.root.public_bytes(serialization.Encoding.DER), 0)
    assert caught.value.problem["type"] == "unauthorized"


async def test_check_passes_and_start_warns_loudly(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="acme_ra_signer"):
        driver = make_driver(settings)
    assert any("NOT FOR PRODUCTION" in record.getMessage() for record in caplog.records)
    await driver.check()
    assert (settings.lab_ca_dir / "root.pem").is_file()


def test_make_driver_refuses_unknown_upstreams(settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown upstream"):
        make_driver(settings.model_copy(update={"upstream": "nope"}))
