"""CSR checks at finalize (RFC 8555 §7.4, §11.1): the CSR must ask for exactly the order's names,
with a key we accept and only the extensions of a TLS server (or client) certificate.

Every way a CSR can fail to parse is ``badCSR``, never an exception of the parser: ``parse_csr``
reads every part the later checks use (signature algorithm, key, extensions, subject) once, here.
The CSR goes to the upstream CA unchanged; subject attributes other than the common name are
ignored here (the upstream sets the subject), see docs/security.md "CSR policy".
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from acme_ra.protocol.identifiers import Identifier
from acme_ra.protocol.jws import check_public_key
from acme_ra.protocol.problems import Problem

_ALLOWED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)

# Extensions a CSR may request (anything else is badCSR naming it, critical or not):
_ALLOWED_EXTENSIONS = {
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,  # the names: must be the order's
    ExtensionOID.KEY_USAGE,  # without keyCertSign / cRLSign
    ExtensionOID.EXTENDED_KEY_USAGE,  # serverAuth / clientAuth only
    ExtensionOID.BASIC_CONSTRAINTS,  # CA:FALSE only
    # Harmless: the CA computes its own key identifier from the key (RFC 5280 §4.2.1.2).
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    # OCSP must-staple (RFC 7633; certbot and lego --must-staple, acme.sh --ocsp): it only
    # restricts the certificate; the upstream decides whether it honours it.
    ExtensionOID.TLS_FEATURE,
}
_ALLOWED_EKUS = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
_ALLOWED_TLS_FEATURES = {x509.TLSFeatureType.status_request, x509.TLSFeatureType.status_request_v2}
_EXTENSION_NAMES = {
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


# What cryptography raises on a malformed or unsupported part of a CSR (the property test of
# tests/frontend/test_csr_policy.py found InvalidVersion, which is no ValueError).
_PARSE_ERRORS = (ValueError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
                 x509.UnsupportedGeneralNameType)


def bad_csr(detail: str) -> Problem:
    return Problem("badCSR", detail)


def _name(oid: x509.ObjectIdentifier) -> str:
    """An OID as people read it: its name when cryptography knows one, and the dotted form."""
    known = _EXTENSION_NAMES.get(oid) or getattr(oid, "_name", "Unknown OID")
    if known == "Unknown OID":
        return oid.dotted_string
    return f"{known} ({oid.dotted_string})"


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    """The CSR, read whole: DER, signature algorithm, key (bounded before the signature is
    verified), signature, extensions, subject. Any failure is badCSR."""
    try:
        csr = x509.load_der_x509_csr(der)
    except _PARSE_ERRORS:
        raise bad_csr("CSR is not a DER-encoded PKCS#10 request") from None
    try:
        algorithm = csr.signature_hash_algorithm
    except _PARSE_ERRORS:
        raise bad_csr("CSR signature algorithm is not supported") from None
    if not isinstance(algorithm, _ALLOWED_HASHES):
        raise bad_csr("CSR must be signed with SHA-256, SHA-384 or SHA-512")
    try:
        key = csr.public_key()
    except _PARSE_ERRORS:
        raise bad_csr("CSR key algorithm is not supported (RSA or ECDSA keys only)") from None
    check_csr_key(key)
    try:
        valid = csr.is_signature_valid
    except _PARSE_ERRORS:
        raise bad_csr("CSR signature cannot be verified") from None
    if not valid:
        raise bad_csr("CSR signature is invalid")
    try:
        csr.extensions  # noqa: B018 - parsed here, so that every parse failure is badCSR
        csr.subject  # noqa: B018
    except _PARSE_ERRORS as error:
        raise bad_csr(f"CSR extensions or subject cannot be parsed: {error}") from None
    return csr


def check_csr_key(key: object) -> None:
    """The key policy of account keys (protocol/jws.py::check_public_key), applied before the
    CSR's signature is verified: a 16,384-bit modulus or a huge public exponent would make that
    one verification cost ~100x a normal one."""
    try:
        check_public_key(key)
    except Problem as problem:
        raise bad_csr(f"CSR key refused: {problem.detail}") from None


def check_csr_extensions(csr: x509.CertificateSigningRequest) -> None:
    """Only what a TLS server or client certificate needs; badCSR naming anything else."""
    for extension in csr.extensions:
        oid, value = extension.oid, extension.value
        if oid not in _ALLOWED_EXTENSIONS:
            critical = "critical " if extension.critical else ""
            raise bad_csr(f"CSR requests an unsupported {critical}extension {_name(oid)}")
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise bad_csr("CSR requests basicConstraints CA:TRUE: only end-entity certificates are issued")
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            bits = [name for name, on in (("keyCertSign", value.key_cert_sign), ("cRLSign", value.crl_sign)) if on]
            raise bad_csr(f"CSR requests keyUsage {', '.join(bits)}: only end-entity certificates are issued")
        if isinstance(value, x509.ExtendedKeyUsage):
            refused = [usage for usage in value if usage not in _ALLOWED_EKUS]
            if refused:
                raise bad_csr("CSR requests extendedKeyUsage " + ", ".join(_name(u) for u in refused)
                              + ": only serverAuth and clientAuth are issued")
        if isinstance(value, x509.TLSFeature):
            features = [feature for feature in value if feature not in _ALLOWED_TLS_FEATURES]
            if features:
                raise bad_csr(f"CSR requests an unsupported TLS feature {features[0].value}")


def check_csr_identifiers(csr: x509.CertificateSigningRequest, identifiers: list[Identifier]) -> None:
    """The CSR's extensions are allowed, and its SANs (and CN, if any) are exactly the order's
    identifiers. Subject attributes other than the common name are ignored (the upstream CA
    sets the subject; acme.sh puts an organizationName in the CSR of an IP-address certificate)."""
    check_csr_extensions(csr)
    wanted_dns = {i.value for i in identifiers if i.type == "dns"}
    wanted_ip = {ipaddress.ip_address(i.value) for i in identifiers if i.type == "ip"}
    dns_names: set[str] = set()
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for name in san:
            if isinstance(name, x509.DNSName):
                dns_names.add(name.value.lower())
            elif isinstance(name, x509.IPAddress):
                if not isinstance(name.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                    raise bad_csr("CSR SAN IP addresses must be addresses, not networks")
                ips.add(name.value)
            else:
                raise bad_csr("CSR may only carry DNS names and IP addresses as SANs")
    common_names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(common_names) > 1:
        raise bad_csr("CSR has more than one common name")
    if common_names:
        cn = str(common_names[0]).lower()
        if cn not in dns_names and cn not in {str(ip) for ip in ips}:
            dns_names.add(cn)  # an IP address belongs in an iPAddress SAN (RFC 8738 §3)
    if dns_names != wanted_dns or ips != wanted_ip:
        missing = sorted(wanted_dns - dns_names) + sorted(str(i) for i in wanted_ip - ips)
        extra = sorted(dns_names - wanted_dns) + sorted(str(i) for i in ips - wanted_ip)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("not in the order: " + ", ".join(extra))
        raise bad_csr("CSR names do not match the order's identifiers: " + "; ".join(parts))
