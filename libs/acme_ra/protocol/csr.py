"""CSR checks at finalize (RFC 8555 §7.4, §11.1): the CSR must ask for exactly the order's names."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID, NameOID

from acme_ra.protocol.identifiers import Identifier
from acme_ra.protocol.problems import Problem

_ALLOWED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
# Extensions a CSR may request; anything else is refused rather than silently dropped.
_ALLOWED_EXTENSIONS = {
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.TLS_FEATURE,
}


def bad_csr(detail: str) -> Problem:
    return Problem("badCSR", detail)


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError:
        raise bad_csr("CSR is not a DER-encoded PKCS#10 request") from None
    try:
        algorithm = csr.signature_hash_algorithm
    except x509.UnsupportedAlgorithm:
        raise bad_csr("CSR signature algorithm is not supported") from None
    if not isinstance(algorithm, _ALLOWED_HASHES):
        raise bad_csr("CSR must be signed with SHA-256, SHA-384 or SHA-512")
    if not csr.is_signature_valid:
        raise bad_csr("CSR signature is invalid")
    return csr


def check_csr_identifiers(csr: x509.CertificateSigningRequest, identifiers: list[Identifier]) -> None:
    """The CSR's SANs (and CN, if any) must be exactly the order's identifiers."""
    wanted_dns = {i.value for i in identifiers if i.type == "dns"}
    wanted_ip = {ipaddress.ip_address(i.value) for i in identifiers if i.type == "ip"}
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as error:
        raise bad_csr(f"CSR extensions cannot be parsed: {error}") from None
    for extension in extensions:
        if extension.oid not in _ALLOWED_EXTENSIONS:
            raise bad_csr(f"CSR requests an unsupported extension {extension.oid.dotted_string}")
    dns_names: set[str] = set()
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for name in san:
            if isinstance(name, x509.DNSName):
                dns_names.add(name.value.lower())
            elif isinstance(name, x509.IPAddress):
                ips.add(name.value)  # type: ignore[arg-type]
            else:
                raise bad_csr("CSR may only carry DNS names and IP addresses as SANs")
    common_names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(common_names) > 1:
        raise bad_csr("CSR has more than one common name")
    for attribute in csr.subject:
        if attribute.oid != NameOID.COMMON_NAME:
            raise bad_csr(f"CSR subject may only hold a common name, not {attribute.oid._name}")
    if common_names:
        cn = str(common_names[0]).lower()
        if cn not in dns_names and cn not in {str(ip) for ip in ips}:
            dns_names.add(cn)
    if dns_names != wanted_dns or ips != wanted_ip:
        missing = sorted(wanted_dns - dns_names) + sorted(str(i) for i in wanted_ip - ips)
        extra = sorted(dns_names - wanted_dns) + sorted(str(i) for i in ips - wanted_ip)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("not in the order: " + ", ".join(extra))
        raise bad_csr("CSR names do not match the order's identifiers: " + "; ".join(parts))
