from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator

import pytest

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra.db.models import utcnow
from acme_ra_validator import worker
from acme_ra_validator.dns01 import txt_record_value
from acme_ra_validator.http01 import new_http_client
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.worker import ChallengeValidator, key_authorization

from .conftest import DnsLab, HttpLab, unused_port
from .rows import insert_pending_order, snapshot

PATH = "/.well-known/acme-challenge/"


class FakeMsg:
    def __init__(self) -> None:
        self.acks = 0

    async def ack(self) -> None:
        self.acks += 1


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


@pytest.fixture
async def validator(db: Database, http_lab: HttpLab) -> AsyncIterator[ChallengeValidator]:
    async with new_http_client() as http:
        yield ChallengeValidator(
            db, http, NameResolver([]), http_port=http_lab.port, authz_lifetime=dt.timedelta(days=30)
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
    assert done[0].challenge_id == rows.challenge_id and done[0].result == "serverInternal"
    assert all(rows.key_authorization not in record.getMessage() for record in caplog.records)


async def test_connection_failure_is_recorded(db: Database) -> None:
    rows = await insert_pending_order(db, "myhost.localhost")
    async with new_http_client() as http:
        refused = ChallengeValidator(
            db, http, NameResolver([]), http_port=unused_port(), authz_lifetime=dt.timedelta(days=1)
        )
        await refused.handle(bus.ValidateJob(challenge_id=rows.challenge_id), FakeMsg())  # type: ignore[arg-type]
    after = await snapshot(db, rows)
    assert after["challenge"]["error"]["type"] == "connection"


async def test_dns01_challenge_is_checked_with_the_configured_resolver(db: Database, dns_lab: DnsLab) -> None:
    rows = await insert_pending_order(db, "example.test", challenge_type="dns-01")
    dns_lab.zone.add(f'_acme-challenge.example.test. 60 IN TXT "{txt_record_value(rows.key_authorization)}"')
    async with new_http_client() as http:
        validator = ChallengeValidator(
            db, http, dns_lab.resolver(), http_port=unused_port(), authz_lifetime=dt.timedelta(days=1)
        )
        await validator.handle(bus.ValidateJob(challenge_id=rows.challenge_id), FakeMsg())  # type: ignore[arg-type]
    after = await snapshot(db, rows)
    assert after["challenge"]["status"] == "valid" and after["order"]["status"] == "ready"
