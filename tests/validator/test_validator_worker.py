from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator

import pytest

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra.db.models import utcnow
from acme_ra.protocol.jws import key_authorization
from acme_ra_validator import worker
from acme_ra_validator.dns01 import txt_record_value
from acme_ra_validator.http01 import ValidationPorts, new_http_client
from acme_ra_validator.network import NetworkPolicy
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.worker import ChallengeValidator, ValidationOptions

from .conftest import LAB_POLICY, DnsLab, HttpLab, unused_port
from .rows import insert_pending_order, snapshot

PATH = "/.well-known/acme-challenge/"


class FakeMsg:
    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.acks = 0
        self.headers = headers

    async def ack(self) -> None:
        self.acks += 1


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


def lab_options(http_port: int, tls_port: int = 443, policy: NetworkPolicy = LAB_POLICY,
                caa_identities: tuple[str, ...] = ()) -> ValidationOptions:
    return ValidationOptions(
        ValidationPorts(http_port, tls_port), policy, caa_identities, external_url="https://ra.example:8443"
    )


@pytest.fixture
async def validator(db: Database, http_lab: HttpLab) -> AsyncIterator[ChallengeValidator]:
    async with new_http_client() as http:
        yield ChallengeValidator(
            db, http, NameResolver([]), lab_options(http_lab.port), authz_lifetime=dt.timedelta(days=30)
        )


def test_key_authorization_uses_the_rfc7638_thumbprint() -> None:
    # RFC 7638 §3.1 example key and thumbprint.
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRX"
        "jBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8"
        "KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_x"
        "BniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    }
    assert key_authorization("tok", jwk) == "tok.NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


async def test_valid_challenge_makes_the_order_ready_and_a_second_run_changes_nothing(
    db: Database, validator: ChallengeValidator, http_lab: HttpLab
) -> None:
    rows = await insert_pending_order(db, "myhost.localhost")
    http_lab.routes[PATH + rows.token] = (200, {}, rows.key_authorization.encode() + b"\n")
    job, msg = bus.ValidateJob(challenge_id=rows.challenge_id, order_id=rows.order_id), FakeMsg()

    await validator.handle(job, msg)  # type: ignore[arg-type]

    after = await snapshot(db, rows)
    assert msg.acks == 1
    assert after["challenge"]["status"] == "valid" and after["challenge"]["error"] is None
    assert after["challenge"]["validated"] is not None
    assert after["authz"]["status"] == "valid"
    assert after["authz"]["expires"] > utcnow() + dt.timedelta(days=29)
    assert after["order"]["status"] == "ready"

    http_lab.routes.clear()  # a re-check would now fail: the duplicate must not re-check
    await validator.handle(job, msg)  # type: ignore[arg-type]
    assert msg.acks == 2
    assert await snapshot(db, rows) == after
    assert len(http_lab.requests) == 1


async def test_failed_challenge_invalidates_authz_and_order(
    db: Database, validator: ChallengeValidator, http_lab: HttpLab
) -> None:
    rows = await insert_pending_order(db, "myhost.localhost")
    http_lab.routes[PATH + rows.token] = (200, {}, b"not the key authorization")
    msg = FakeMsg()

    await validator.handle(bus.ValidateJob(challenge_id=rows.challenge_id), msg)  # type: ignore[arg-type]

    after = await snapshot(db, rows)
    assert msg.acks == 1
    assert after["challenge"]["status"] == "invalid"
    assert after["challenge"]["error"]["type"] == "unauthorized"
    assert after["authz"]["status"] == "invalid"
    assert after["order"]["status"] == "invalid"
    assert after["order"]["error"] == after["challenge"]["error"]


async def test_unknown_challenge_is_acked(validator: ChallengeValidator) -> None:
    msg = FakeMsg()
    await validator.handle(bus.ValidateJob(challenge_id="no-such-challenge"), msg)  # type: ignore[arg-type]
    assert msg.acks == 1


async def test_a_bug_becomes_server_internal_without_detail(
    db: Database, validator: ChallengeValidator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_args: object) -> None:
        raise KeyError("internal secret detail")

    monkeypatch.setattr(worker, "check_http01", broken)
    rows = await insert_pending_order(db, "myhost.localhost")
    msg = FakeMsg()
    with caplog.at_level(logging.INFO, logger="acme_ra_validator.worker"):
        await validator.handle(bus.ValidateJob(challenge_id=rows.challenge_id), msg)  # type: ignore[arg-type]

    after = await snapshot(db, rows)
    assert after["challenge"]["error"] == {"type": "serverInternal", "detail": "validation failed unexpectedly"}
    done = [record for record in caplog.records if record.getMessage() == "validation job done"]
    assert len(done) == 1
    assert done[0].__dict__["challenge_id"] == rows.challenge_id and done[0].__dict__["result"] == "serverInternal"
    assert all(rows.key_authorization not in record.getMessage() for record in caplog.records)


async def test_connection_failure_is_recorded(db: Database) -> None:
    rows = await insert_pending_order(db, "myhost.localhost")
    async with new_http_client() as http:
        refused = ChallengeValidator(
            db, http, NameResolver([]), lab_options(unused_port()), authz_lifetime=dt.timedelta(days=1)
        )
        await refused.handle(bus.ValidateJob(challenge_id=rows.challenge_id), FakeMsg())  # type: ignore[arg-type]
    after = await snapshot(db, rows)
    assert after["challenge"]["error"]["type"] == "connection"


async def test_dns01_challenge_is_checked_with_the_configured_resolver(db: Database, dns_lab: DnsLab) -> None:
    rows = await insert_pending_order(db, "example.test", challenge_type="dns-01")
    dns_lab.zone.add(f'_acme-challenge.example.test. 60 IN TXT "{txt_record_value(rows.key_authorization)}"')
    async with new_http_client() as http:
        validator = ChallengeValidator(
            db, http, dns_lab.resolver(), lab_options(unused_port()), authz_lifetime=dt.timedelta(days=1)
        )
        await validator.handle(bus.ValidateJob(challenge_id=rows.challenge_id), FakeMsg())  # type: ignore[arg-type]
    after = await snapshot(db, rows)
    assert after["challenge"]["status"] == "valid" and after["order"]["status"] == "ready"


async def test_dns01_never_validates_an_ip_identifier(db: Database, validator: ChallengeValidator) -> None:
    rows = await insert_pending_order(db, "127.0.0.1", challenge_type="dns-01", identifier_type="ip")
    await validator.handle(bus.ValidateJob(challenge_id=rows.challenge_id), FakeMsg())  # type: ignore[arg-type]
    after = await snapshot(db, rows)
    assert after["challenge"]["status"] == "invalid"
    assert after["challenge"]["error"] == {
        "type": "malformed",
        "detail": "dns-01 cannot validate an IP address identifier (RFC 8738 §7)",
    }


async def test_http01_validates_an_ip_identifier(
    db: Database, validator: ChallengeValidator, http_lab: HttpLab
) -> None:
    rows = await insert_pending_order(db, "127.0.0.1", identifier_type="ip")
    http_lab.routes[PATH + rows.token] = (200, {}, rows.key_authorization.encode())
    await validator.handle(bus.ValidateJob(challenge_id=rows.challenge_id), FakeMsg())  # type: ignore[arg-type]
    after = await snapshot(db, rows)
    assert after["challenge"]["status"] == "valid"
    assert http_lab.requests == [(PATH + rows.token, f"127.0.0.1:{http_lab.port}")]


async def test_http01_never_validates_a_wildcard(db: Database, validator: ChallengeValidator) -> None:
    rows = await insert_pending_order(db, "myhost.localhost", wildcard=True)
    await validator.handle(bus.ValidateJob(challenge_id=rows.challenge_id), FakeMsg())  # type: ignore[arg-type]
    after = await snapshot(db, rows)
    assert after["challenge"]["error"]["type"] == "malformed"
    assert "wildcard" in after["challenge"]["error"]["detail"]


async def test_loopback_refused_without_the_lab_allow_list(db: Database, http_lab: HttpLab) -> None:
    rows = await insert_pending_order(db, "myhost.localhost")
    http_lab.routes[PATH + rows.token] = (200, {}, rows.key_authorization.encode())
    async with new_http_client() as http:
        production = ChallengeValidator(
            db, http, NameResolver([]), lab_options(http_lab.port, policy=NetworkPolicy()),
            authz_lifetime=dt.timedelta(days=1),
        )
        await production.handle(bus.ValidateJob(challenge_id=rows.challenge_id), FakeMsg())  # type: ignore[arg-type]
    after = await snapshot(db, rows)
    assert after["challenge"]["error"]["type"] == "connection"
    assert "may not reach (ACME_RA_VALIDATION_DENY_NETWORKS)" in after["challenge"]["error"]["detail"]
    assert http_lab.requests == []


def test_options_from_settings() -> None:
    from acme_ra.config import Settings

    settings = Settings(
        validation_http_port=8080,
        validation_tls_port=8443,
        validation_allow_networks="127.0.0.0/8, ::1/128",
        validation_deny_networks="127.0.0.2",
        caa_identities="Sectigo.com,incommon.org",
        external_url="https://ra.example.org/",
    )
    options = ValidationOptions.from_settings(settings)
    assert options.ports == ValidationPorts(8080, 8443)
    assert options.caa_identities == ("sectigo.com", "incommon.org")
    assert options.network_policy.permits("127.0.0.1") and not options.network_policy.permits("127.0.0.2")
    assert options.account_url("acme", "abc") == "https://ra.example.org/acme/acme/account/abc"
