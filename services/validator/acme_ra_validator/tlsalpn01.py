"""tls-alpn-01 (RFC 8737; RFC 8738 §6 for IP identifiers): a TLS handshake that negotiates the
``acme-tls/1`` protocol and presents a certificate made for the challenge.

The validator connects to the permitted addresses of the name (or to the IP itself) on the
validation TLS port, with SNI = the name (for an IP: its reverse-DNS name) and ALPN offering only
``acme-tls/1``. The certificate is not verified as a chain (it is self-signed); it must carry
exactly one subjectAltName, the identifier, and a critical id-pe-acmeIdentifier extension whose
value is the DER OCTET STRING of SHA-256(key authorization).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import ssl

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from acme_ra import telemetry
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.network import NetworkPolicy, addresses_to_dial
from acme_ra_validator.resolver import NameResolver, reverse_name

ACME_TLS_ALPN_PROTOCOL = "acme-tls/1"
# id-pe-acmeIdentifier (RFC 8737 §6.1).
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# Seconds to open the TCP connection to one address (before trying the next).
CONNECT_TIMEOUT_SECONDS = 5.0
# Seconds the TLS handshake may take once connected.
HANDSHAKE_TIMEOUT_SECONDS = 10.0
# Seconds allowed for a polite TLS close before the connection is dropped.
CLOSE_TIMEOUT_SECONDS = 2.0
# DER OCTET STRING header of a SHA-256 digest: tag 0x04, length 32.
_OCTET_STRING_32 = b"\x04\x20"


def client_context() -> ssl.SSLContext:
    """TLS 1.2 or later (RFC 8737 §4), ALPN ``acme-tls/1`` only, no chain or name verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_ALPN_PROTOCOL])
    return context


def acme_identifier_value(key_authorization: str) -> bytes:
    """The extension value the certificate must carry: DER OCTET STRING of SHA-256(key authz)."""
    return _OCTET_STRING_32 + hashlib.sha256(key_authorization.encode("ascii")).digest()


async def check_tls_alpn01(
    resolver: NameResolver,
    policy: NetworkPolicy,
    port: int,
    identifier_type: str,
    identifier_value: str,
    key_authorization: str,
) -> None:
    """Return when the server presents the right certificate; raise ValidationFailure otherwise."""
    is_ip = identifier_type == "ip"
    server_name = reverse_name(identifier_value) if is_ip else identifier_value
    addresses = await addresses_to_dial(resolver, policy, identifier_value)
    failure: ValidationFailure | None = None
    for address in addresses:
        try:
            der = await _handshake(address, port, server_name)
        except _ConnectFailed as error:
            failure = error.failure  # this address is unreachable: try the next one
            continue
        check_certificate(der, identifier_type, identifier_value, key_authorization, _netloc(address, port))
        return
    raise failure or ValidationFailure("dns", f"No valid IP addresses found for {identifier_value}")


class _ConnectFailed(Exception):
    def __init__(self, failure: ValidationFailure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def _netloc(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def _handshake(address: str, port: int, server_name: str) -> bytes:
    """Connect, shake hands, and return the peer certificate (DER)."""
    where = _netloc(address, port)
    with telemetry.span(
        "validator.tls_handshake",
        **{"network.peer.address": address, "network.peer.port": port, "tls.server_name": server_name},
    ) as span:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                _reader, writer = await asyncio.open_connection(address, port)
        except TimeoutError:
            raise _ConnectFailed(ValidationFailure("connection", f"{where}: Timeout during connect")) from None
        except OSError:
            raise _ConnectFailed(
                ValidationFailure("connection", f"{where}: Connection refused or unreachable")
            ) from None
        shaken = False
        try:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_SECONDS):
                    await writer.start_tls(client_context(), server_hostname=server_name)
                shaken = True
            except TimeoutError:
                raise ValidationFailure("connection", f"{where}: Timeout during the TLS handshake") from None
            except ssl.SSLError as error:
                reason = error.reason or error.__class__.__name__
                raise ValidationFailure("tls", f"{where}: TLS handshake failed ({reason})") from None
            except OSError:
                raise ValidationFailure("connection", f"{where}: Connection reset during the TLS handshake") from None
            tls = writer.get_extra_info("ssl_object")
            negotiated = tls.selected_alpn_protocol() if tls is not None else None
            span.set_attribute("tls.alpn", negotiated or "")
            if negotiated != ACME_TLS_ALPN_PROTOCOL:
                raise ValidationFailure(
                    "tls",
                    f"{where}: the server did not negotiate the {ACME_TLS_ALPN_PROTOCOL} protocol "
                    f"(got {negotiated or 'no ALPN protocol'})",
                )
            der = tls.getpeercert(binary_form=True)
            if not der:
                raise ValidationFailure("tls", f"{where}: the server presented no certificate")
            return bytes(der)
        finally:
            await _close(writer, polite=shaken)


async def _close(writer: asyncio.StreamWriter, polite: bool) -> None:
    """After a handshake, close with close_notify (bounded: a peer that ignores it does not hold
    the job); after a failed one, drop the connection."""
    if polite:
        writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await writer.wait_closed()
            return
        except (TimeoutError, OSError, ssl.SSLError):
            pass
    writer.transport.abort()


def check_certificate(
    der: bytes, identifier_type: str, identifier_value: str, key_authorization: str, where: str
) -> None:
    """RFC 8737 §3: exactly one SAN (the identifier) and a critical acmeIdentifier extension."""
    prefix = f"Incorrect validation certificate for tls-alpn-01 challenge from {where}"
    try:
        certificate = x509.load_der_x509_certificate(der)
        extensions = certificate.extensions
    except ValueError as error:
        raise ValidationFailure("unauthorized", f"{prefix}: the certificate could not be parsed ({error})") from None
    try:
        names = list(extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []
    expected = _expected_name(identifier_type, identifier_value)
    if len(names) != 1 or _comparable(names[0]) != _comparable(expected):
        shown = ", ".join(_show(name) for name in names) or "none"
        raise ValidationFailure(
            "unauthorized",
            f"{prefix}: it must carry exactly one subjectAltName, {_show(expected)}; it carries {shown}",
        )
    try:
        extension = extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        raise ValidationFailure(
            "unauthorized", f"{prefix}: the acmeIdentifier extension (1.3.6.1.5.5.7.1.31) is missing"
        ) from None
    if not extension.critical:
        raise ValidationFailure("unauthorized", f"{prefix}: the acmeIdentifier extension is not marked critical")
    value = extension.value.value if isinstance(extension.value, x509.UnrecognizedExtension) else b""
    if not hmac.compare_digest(value, acme_identifier_value(key_authorization)):
        raise ValidationFailure(
            "unauthorized",
            f"{prefix}: the acmeIdentifier extension does not hold the SHA-256 digest of this "
            "challenge's key authorization",
        )


def _expected_name(identifier_type: str, identifier_value: str) -> x509.GeneralName:
    if identifier_type == "ip":
        return x509.IPAddress(ipaddress.ip_address(identifier_value))
    return x509.DNSName(identifier_value.lower())


def _comparable(name: x509.GeneralName) -> tuple[str, object]:
    """dNSName compares without regard to case (RFC 4343)."""
    if isinstance(name, x509.DNSName):
        return ("dns", name.value.lower())
    return (type(name).__name__, name.value)


def _show(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"dNSName {name.value}"
    if isinstance(name, x509.IPAddress):
        return f"iPAddress {name.value}"
    return type(name).__name__
