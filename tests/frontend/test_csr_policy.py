"""The CSR policy (protocol/csr.py) in-process: what is accepted, what is badCSR and why, and a
property test that no CSR body, generated or mutated from real ones, escapes as anything but
badCSR.

ACME_RA_HYPOTHESIS_CSR_EXAMPLES sets the property test's examples (else ACME_RA_HYPOTHESIS_EXAMPLES,
else 2,500; issue 18 asks for 10^5 once: docs/security.md "CSR policy" gives the figure).
"""

from __future__ import annotations

import ipaddress
import math
import os
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acme_ra.protocol.csr import check_csr_identifiers, parse_csr
from acme_ra.protocol.identifiers import Identifier
from acme_ra.protocol.jws import check_public_key
from acme_ra.protocol.problems import Problem

EXAMPLES = int(os.environ.get("ACME_RA_HYPOTHESIS_CSR_EXAMPLES") or os.environ.get("ACME_RA_HYPOTHESIS_EXAMPLES", "2500"))

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(65537, 2048)
NAME = "csr.example.org"
ORDER = [Identifier("dns", NAME)]


def build(*extensions: tuple[x509.ExtensionType, bool], key: Any = EC_KEY, subject: x509.Name | None = None,
          sans: list[x509.GeneralName] | None = None, digest: hashes.HashAlgorithm | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    builder = builder.add_extension(x509.SubjectAlternativeName(sans or [x509.DNSName(NAME)]), False)
    for value, critical in extensions:
        builder = builder.add_extension(value, critical)
    # Any digest: the tests sign with some that cryptography's stubs leave out, to see them refused.
    chosen = digest if digest is not None or isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, chosen).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


def finalize_checks(der: bytes, identifiers: list[Identifier] = ORDER) -> None:
    """What orders.finalize does with a CSR before it is claimed (the key check mapped to badCSR)."""
    csr = parse_csr(der)
    try:
        check_public_key(csr.public_key())
    except Problem as error:
        raise Problem("badCSR", f"CSR key refused: {error.detail}") from None
    check_csr_identifiers(csr, identifiers)


def refusal(der: bytes, identifiers: list[Identifier] = ORDER) -> str:
    with pytest.raises(Problem) as caught:
        finalize_checks(der, identifiers)
    assert caught.value.type == "badCSR", caught.value.to_dict()
    assert caught.value.status == 400
    return caught.value.detail


def key_usage(**bits: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{name: bits.get(name, False) for name in names})


def test_what_tls_clients_send_is_accepted() -> None:
    server_client = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    must_staple = x509.TLSFeature([x509.TLSFeatureType.status_request])
    ski = x509.SubjectKeyIdentifier.from_public_key(EC_KEY.public_key())
    for der in (
        build(),  # certbot, lego, uacme
        build((must_staple, False)),  # certbot --must-staple
        build((server_client, False), (x509.BasicConstraints(ca=False, path_length=None), False), (must_staple, False)),
        build((key_usage(digital_signature=True, key_encipherment=True), True), (server_client, False), (ski, False)),
        build(key=RSA_KEY, digest=hashes.SHA384()),
    ):
        finalize_checks(der)


def test_subject_attributes_other_than_the_cn_are_ignored() -> None:
    """acme.sh 3.1.4 puts O=acme.sh in the CSR of an IP-address certificate."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme.sh"),
                         x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
                         x509.NameAttribute(NameOID.EMAIL_ADDRESS, "x@example.org")])
    ip = ipaddress.ip_address("192.0.2.7")
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    der = build((eku, False), subject=subject, sans=[x509.IPAddress(ip)])
    finalize_checks(der, [Identifier("ip", "192.0.2.7")])
    with_cn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "web")])
    finalize_checks(build(subject=with_cn))
    # The common name still counts: it must be one of the order's names, and there is one at most.
    assert "not in the order: other.example.org" in refusal(
        build(subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other.example.org")])))
    two = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME), x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    assert "more than one common name" in refusal(build(subject=two))


@pytest.mark.parametrize(("extension", "critical", "named"), [
    (x509.BasicConstraints(ca=True, path_length=None), True, "CA:TRUE"),
    (x509.BasicConstraints(ca=True, path_length=0), False, "CA:TRUE"),
    (key_usage(digital_signature=True, key_cert_sign=True), True, "keyCertSign"),
    (key_usage(crl_sign=True), False, "cRLSign"),
    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False, "codeSigning"),
    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]), False,
     "anyExtendedKeyUsage"),
    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False, "emailProtection"),
    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False, "OCSPSigning"),
    (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True,
     "critical extension 1.3.6.1.4.1.99999.1"),
    (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.2"), b"\x05\x00"), False,
     "extension 1.3.6.1.4.1.99999.2"),
    (x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.org")], excluded_subtrees=None), True,
     "nameConstraints"),
    (x509.OCSPNoCheck(), False, "OCSPNoCheck"),
    (x509.PrecertPoison(), True, "ctPoison"),
    (x509.TLSFeature([x509.TLSFeatureType.status_request_v2, x509.TLSFeatureType.status_request]), False, None),
])
def test_extensions_of_a_ca_or_another_use_are_bad_csr_naming_them(
        extension: x509.ExtensionType, critical: bool, named: str | None) -> None:
    der = build((extension, critical))
    if named is None:
        finalize_checks(der)
        return
    detail = refusal(der)
    assert named in detail, detail


def test_unknown_key_algorithm_is_bad_csr_not_a_500() -> None:
    """issue 18: a CSR whose key algorithm OID is unknown raised UnsupportedAlgorithm (500)."""
    der = build()
    ec_public_key = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
    assert ec_public_key in der
    assert "key algorithm is not supported" in refusal(der.replace(ec_public_key, bytes.fromhex("06072a8648ce3d0209")))
    # Ed25519 (no hash) is refused too (SHA-1: frontend/test_checklist.py::test_f4_f6_sha1_csr_and_unrequested_sans).
    assert "SHA-256" in refusal(build(key=ed25519.Ed25519PrivateKey.generate()))


def rsa_key_with_exponent(at_least: int) -> rsa.RSAPrivateKey:
    """RSA_KEY's primes with the first usable odd exponent from ``at_least`` (cryptography only
    generates 3 and 65537)."""
    private = RSA_KEY.private_numbers()
    p, q = private.p, private.q
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    e = at_least | 1
    while math.gcd(e, lam) != 1:
        e += 2
    d = pow(e, -1, lam)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key()


def test_rsa_keys_are_bounded_before_the_signature_is_checked() -> None:
    weak = rsa.generate_private_key(65537, 1024)
    assert "2048 to 4096 bits" in refusal(build(key=weak))
    assert "exponent must be 65537" in refusal(build(key=rsa_key_with_exponent(65539)))
    assert "exponent must be 65537" in refusal(build(key=rsa_key_with_exponent(2**1000 + 1)))
    # An even modulus (a factor of 2) or one with a small prime factor: factored at once. Such a
    # key cannot sign: a valid RSA public key with the bad modulus goes into a CSR by hand.
    good = parse_csr(build(key=RSA_KEY))
    n = RSA_KEY.public_key().public_numbers().n
    spki = RSA_KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    bad_n = n - n % 6 + 6 if (n - n % 6 + 6).bit_length() == n.bit_length() else n - n % 6
    bad_spki = rsa.RSAPublicNumbers(65537, bad_n).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki in good.tbs_certrequest_bytes and len(bad_spki) == len(spki)
    detail = refusal(build(key=RSA_KEY).replace(spki, bad_spki))
    assert "small prime factor" in detail, detail


def test_garbage_and_broken_signatures_are_bad_csr() -> None:
    der = build()
    for body in (b"", b"\x30", b"\x30\x00", der[:-1], der + b"\x00", der[:40], b"\x00" * 64):
        refusal(body)
    flipped = bytearray(der)
    flipped[-3] ^= 0x01  # inside the signature
    assert "signature" in refusal(bytes(flipped))


# Property test ----------------------------------------------------------------------------------

SEEDS = [
    build(),
    build(key=RSA_KEY),
    build((x509.BasicConstraints(ca=True, path_length=None), True)),
    build((key_usage(key_cert_sign=True, digital_signature=True), True),
          (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)),
    build((x509.TLSFeature([x509.TLSFeatureType.status_request]), False),
          subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme.sh")]),
          sans=[x509.DNSName(NAME), x509.IPAddress(ipaddress.ip_address("2001:db8::1"))]),
]


def _mutate(seed: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for position, kind, value in edits:
        if not data:
            data.extend(value)
            continue
        at = position % len(data)
        if kind == 0:  # overwrite a byte
            data[at] = value[0] if value else 0
        elif kind == 1:  # insert
            data[at:at] = value
        elif kind == 2:  # delete a run
            del data[at:at + 1 + len(value)]
        else:  # a length byte or a tag off by a little
            data[at] = (data[at] + (value[0] if value else 1)) % 256
    return bytes(data)


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


der_trees = st.recursive(
    st.tuples(st.sampled_from([0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x80, 0x82, 0x87]),
              st.binary(max_size=24)).map(lambda t: _der(*t)),
    lambda inner: st.tuples(st.sampled_from([0x30, 0x31, 0xA0, 0xA3, 0x04, 0x03]), st.lists(inner, max_size=5))
    .map(lambda t: _der(t[0], (b"\x00" if t[0] == 0x03 else b"") + b"".join(t[1]))),
    max_leaves=20,
)
edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.binary(max_size=6)), min_size=1, max_size=4)
csr_bodies = (
    st.tuples(st.sampled_from(SEEDS), edits).map(lambda t: _mutate(*t))
    | der_trees
    | st.tuples(st.sampled_from(SEEDS), der_trees, st.integers(0, 10_000)).map(  # a subtree spliced in
        lambda t: t[0][:t[2] % len(t[0])] + t[1] + t[0][t[2] % len(t[0]):])
    | st.binary(max_size=400)
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=csr_bodies)
def test_any_csr_body_is_accepted_or_bad_csr(body: bytes) -> None:
    try:
        finalize_checks(body, [Identifier("dns", NAME), Identifier("ip", "2001:db8::1")])
    except Problem as problem:
        assert problem.type == "badCSR", problem.to_dict()
