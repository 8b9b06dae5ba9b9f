"""tls-alpn-01 against real TLS servers on loopback presenting certificates made here."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import AsyncIterator

import pytest
from cryptography import x509

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra_validator import tlsalpn01
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.http01 import ValidationPorts, new_http_client
from acme_ra_validator.network import NetworkPolicy
from acme_ra_validator.resolver import NameResolver, reverse_name
from acme_ra_validator.tlsalpn01 import acme_identifier_value, check_tls_alpn01
from acme_ra_validator.worker import ChallengeValidator, ValidationOptions

from .conftest import LAB_POLICY, DnsLab, TlsLab, challenge_certificate, unused_port
from .rows import insert_pending_order, snapshot

KEY_AUTH = "tok-123.thumbprint-abc"
DOMAIN = "myhost.localhost"


async def check(port: int, value: str = DOMAIN, identifier_type: str = "dns", key_auth: str = KEY_AUTH,
                policy: NetworkPolicy = LAB_POLICY, resolver: NameResolver | None = None) -> None:
    await check_tls_alpn01(resolver or NameResolver([]), policy, port, identifier_type, value, key_auth)


async def failure_of(port: int, **kwargs: object) -> ValidationFailure:
    with pytest.raises(ValidationFailure) as failure:
        await check(port, **kwargs)  # type: ignore[arg-type]
    return failure.value


def test_extension_value_is_a_der_octet_string_of_the_digest() -> None:
    value = acme_identifier_value("a")
    assert value[:2] == b"\x04\x20" and len(value) == 34
    assert value[2:].hex() == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"


def test_reverse_names() -> None:
    assert reverse_name("192.0.2.5") == "5.2.0.192.in-addr.arpa"
    assert reverse_name("2001:db8::1") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    )


async def test_good_certificate(tls_lab: TlsLab) -> None:
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName(DOMAIN)], KEY_AUTH))
    await check(port)
    # SNI is the name being validated; IPv4 is tried first and answers.
    assert tls_lab.server_names == [DOMAIN]


async def test_san_compares_without_case(tls_lab: TlsLab) -> None:
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName(DOMAIN.upper())], KEY_AUTH))
    await check(port)


async def test_ip_identifier_uses_the_reverse_name_and_an_ip_san(tls_lab: TlsLab) -> None:
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    port = await tls_lab.serve(*challenge_certificate(names, KEY_AUTH))
    # A resolver that would time out: an IP identifier causes no DNS query.
    await check(port, "127.0.0.1", "ip", resolver=NameResolver([("127.0.0.1", 9)], lifetime=3.0))
    assert tls_lab.server_names == ["1.0.0.127.in-addr.arpa"]


async def test_ipv6_identifier(tls_lab: TlsLab) -> None:
    names = [x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        port = await tls_lab.serve(*challenge_certificate(names, KEY_AUTH), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    await check(port, "::1", "ip")
    assert tls_lab.server_names == [reverse_name("::1")]
    assert (tls_lab.server_names[0] or "").endswith(".ip6.arpa")


async def test_ip_identifier_with_a_dns_san_is_refused(tls_lab: TlsLab) -> None:
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName("1.0.0.127.in-addr.arpa")], KEY_AUTH))
    failure = await failure_of(port, value="127.0.0.1", identifier_type="ip")
    assert failure.type == "unauthorized"
    assert "exactly one subjectAltName, iPAddress 127.0.0.1" in failure.detail


@pytest.mark.parametrize(
    ("names", "shown"),
    [
        ([x509.DNSName("other.example")], "dNSName other.example"),
        ([x509.DNSName(DOMAIN), x509.DNSName("other.example")], f"dNSName {DOMAIN}, dNSName other.example"),
        ([], "none"),
    ],
)
async def test_wrong_subject_alt_names(tls_lab: TlsLab, names: list[x509.GeneralName], shown: str) -> None:
    port = await tls_lab.serve(*challenge_certificate(names, KEY_AUTH))
    failure = await failure_of(port)
    assert failure.to_data() == {
        "type": "unauthorized",
        "detail": f"Incorrect validation certificate for tls-alpn-01 challenge from 127.0.0.1:{port}: "
        f"it must carry exactly one subjectAltName, dNSName {DOMAIN}; it carries {shown}",
    }


async def test_missing_extension(tls_lab: TlsLab) -> None:
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName(DOMAIN)], None))
    failure = await failure_of(port)
    assert failure.type == "unauthorized"
    assert "acmeIdentifier extension (1.3.6.1.5.5.7.1.31) is missing" in failure.detail


async def test_extension_must_be_critical(tls_lab: TlsLab) -> None:
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName(DOMAIN)], KEY_AUTH, critical=False))
    failure = await failure_of(port)
    assert failure.type == "unauthorized"
    assert "not marked critical" in failure.detail


@pytest.mark.parametrize(
    "value",
    [
        acme_identifier_value("tok-123.another-account"),  # another key authorization
        acme_identifier_value(KEY_AUTH)[2:],  # the bare digest, not an OCTET STRING
        b"\x04\x21" + acme_identifier_value(KEY_AUTH)[2:] + b"\x00",  # wrong length
    ],
)
async def test_wrong_extension_value(tls_lab: TlsLab, value: bytes) -> None:
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName(DOMAIN)], None, extension_value=value))
    failure = await failure_of(port)
    assert failure.type == "unauthorized"
    assert "does not hold the SHA-256 digest of this challenge's key authorization" in failure.detail


async def test_server_without_acme_tls_alpn(tls_lab: TlsLab) -> None:
    # The server knows only http/1.1: no protocol is negotiated.
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName(DOMAIN)], KEY_AUTH), alpn=("http/1.1",))
    failure = await failure_of(port)
    assert failure.type == "tls"
    assert "did not negotiate the acme-tls/1 protocol (got no ALPN protocol)" in failure.detail


async def test_a_server_that_does_not_speak_tls_is_a_tls_error() -> None:
    async def plain_http(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    try:
        failure = await failure_of(server.sockets[0].getsockname()[1])
    finally:
        server.close()
    assert failure.type == "tls"
    assert "TLS handshake failed" in failure.detail


async def test_connection_refused() -> None:
    port = unused_port()
    failure = await failure_of(port)
    assert failure.type == "connection"
    assert "Connection refused" in failure.detail


async def test_silent_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlsalpn01, "HANDSHAKE_TIMEOUT_SECONDS", 0.3)

    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the ClientHello, until the validator gives up and hangs up
        writer.close()  # else the writer is left to the garbage collector: a ResourceWarning later

    silent = await asyncio.start_server(say_nothing, "127.0.0.1", 0)
    try:
        failure = await failure_of(silent.sockets[0].getsockname()[1])
    finally:
        silent.close()
    assert failure.type == "connection"
    assert "Timeout during the TLS handshake" in failure.detail


async def test_next_address_is_tried(tls_lab: TlsLab, dns_lab: DnsLab) -> None:
    # The server listens on 127.0.0.1 only: 127.0.0.2 refuses, then 127.0.0.1 answers.
    dns_lab.zone.add("multi.example.test. 60 IN A 127.0.0.2")
    dns_lab.zone.add("multi.example.test. 60 IN A 127.0.0.1")
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName("multi.example.test")], KEY_AUTH))
    await check(port, "multi.example.test", resolver=dns_lab.resolver())


async def test_loopback_refused_by_default(tls_lab: TlsLab) -> None:
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName(DOMAIN)], KEY_AUTH))
    failure = await failure_of(port, policy=NetworkPolicy())
    assert failure.type == "connection"
    assert "127.0.0.1 is in a network the validator may not reach" in failure.detail
    assert tls_lab.server_names == []


# The job handler with tls-alpn-01 ----------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


class FakeMsg:
    headers = None

    async def ack(self) -> None:
        pass


async def run_job(db: Database, rows_challenge_id: str, tls_port: int) -> None:
    options = ValidationOptions(ValidationPorts(unused_port(), tls_port), LAB_POLICY)
    async with new_http_client() as http:
        validator = ChallengeValidator(db, http, NameResolver([]), options, authz_lifetime=dt.timedelta(days=1))
        await validator.handle(bus.ValidateJob(challenge_id=rows_challenge_id), FakeMsg())  # type: ignore[arg-type]


async def test_job_validates_a_name(db: Database, tls_lab: TlsLab) -> None:
    rows = await insert_pending_order(db, DOMAIN, challenge_type="tls-alpn-01")
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName(DOMAIN)], rows.key_authorization))
    await run_job(db, rows.challenge_id, port)
    after = await snapshot(db, rows)
    assert after["challenge"]["status"] == "valid" and after["order"]["status"] == "ready"


async def test_job_validates_an_ip(db: Database, tls_lab: TlsLab) -> None:
    rows = await insert_pending_order(db, "127.0.0.1", challenge_type="tls-alpn-01", identifier_type="ip")
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    port = await tls_lab.serve(*challenge_certificate(names, rows.key_authorization))
    await run_job(db, rows.challenge_id, port)
    after = await snapshot(db, rows)
    assert after["challenge"]["status"] == "valid"


async def test_job_records_a_wrong_certificate(db: Database, tls_lab: TlsLab) -> None:
    rows = await insert_pending_order(db, DOMAIN, challenge_type="tls-alpn-01")
    port = await tls_lab.serve(*challenge_certificate([x509.DNSName(DOMAIN)], "someone-else's"))
    await run_job(db, rows.challenge_id, port)
    after = await snapshot(db, rows)
    assert after["challenge"]["status"] == "invalid"
    assert after["challenge"]["error"]["type"] == "unauthorized"
    assert after["order"]["status"] == "invalid"

