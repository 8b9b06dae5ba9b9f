"""CAA (RFC 8659 + RFC 8657) against a dnslib server serving CAA records."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra_validator.caa import candidate_names, check_caa, parse_issue_value
from acme_ra_validator.dns01 import txt_record_value
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.http01 import ValidationPorts, new_http_client
from acme_ra_validator.worker import ChallengeValidator, ValidationOptions

from .conftest import LAB_POLICY, DnsLab, HttpLab
from .rows import insert_pending_order, snapshot

IDENTITIES = ("ca.example", "other-brand.example")
ACCOUNT = "https://ra.example:8443/acme/acme/account/acct1"
NAME = "www.example.test"


async def check(dns_lab: DnsLab, name: str = NAME, *, wildcard: bool = False, method: str = "http-01",
                identities: tuple[str, ...] = IDENTITIES, account: str = ACCOUNT) -> None:
    await check_caa(
        dns_lab.resolver(), name, wildcard=wildcard, identities=identities, account_uri=account, method=method
    )


async def refused(dns_lab: DnsLab, name: str = NAME, **kwargs: object) -> ValidationFailure:
    with pytest.raises(ValidationFailure) as failure:
        await check(dns_lab, name, **kwargs)  # type: ignore[arg-type]
    return failure.value


def test_candidate_names_climb_to_the_tld() -> None:
    assert candidate_names("a.b.example.test") == ["a.b.example.test", "b.example.test", "example.test", "test"]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("ca.example", ("ca.example", [])),
        ("  ca.example  ", ("ca.example", [])),
        (";", (None, [])),
        ("", (None, [])),
        ("ca.example; accounturi=https://x/acct/1", ("ca.example", [("accounturi", "https://x/acct/1")])),
        (
            "ca.example;AccountURI = https://x/1 ; validationmethods=dns-01,http-01;",
            ("ca.example", [("accounturi", "https://x/1"), ("validationmethods", "dns-01,http-01")]),
        ),
        ("ca.example; junk", None),
        ("ca..example", None),
        ("ca example", None),
        ("ca.example; a=b c", None),
    ],
)
def test_parse_issue_value(value: str, parsed: object) -> None:
    assert parse_issue_value(value) == parsed


async def test_no_caa_anywhere_permits(dns_lab: DnsLab) -> None:
    dns_lab.zone.add(f"{NAME}. 60 IN A 192.0.2.1")
    await check(dns_lab)


async def test_record_at_a_parent_naming_this_ca_permits(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", "other.example")
    dns_lab.zone.add_caa("example.test.", "issue", "CA.Example")
    await check(dns_lab)


async def test_record_naming_another_ca_refuses(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", "letsencrypt.org")
    failure = await refused(dns_lab)
    assert failure.to_data() == {
        "type": "caa",
        "detail": 'CAA record for example.test prevents issuance: issue "letsencrypt.org" does not name this CA '
        "(ca.example, other-brand.example)",
    }


async def test_the_closest_rrset_wins(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa(f"{NAME}.", "issue", "ca.example")
    dns_lab.zone.add_caa("example.test.", "issue", "letsencrypt.org")
    await check(dns_lab)
    failure = await refused(dns_lab, "api.example.test")
    assert "CAA record for example.test" in failure.detail


async def test_empty_issuer_refuses(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", ";")
    failure = await refused(dns_lab)
    assert failure.type == "caa" and 'issue ";" authorizes no CA' in failure.detail


async def test_critical_unknown_tag_refuses_and_a_non_critical_one_is_ignored(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "future", "something")
    dns_lab.zone.add_caa("example.test.", "iodef", "mailto:security@example.test")
    await check(dns_lab)  # no issue property: any CA
    dns_lab.zone.add_caa("example.test.", "tbs", "Unknown", flags=128)
    failure = await refused(dns_lab)
    assert failure.detail == "CAA record for example.test prevents issuance: critical property 'tbs' is not understood"


async def test_issuewild_governs_wildcards_only(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", "ca.example")
    dns_lab.zone.add_caa("example.test.", "issuewild", ";")
    await check(dns_lab, "example.test")
    failure = await refused(dns_lab, "example.test", wildcard=True, method="dns-01")
    assert 'issuewild ";" authorizes no CA' in failure.detail


async def test_wildcard_without_issuewild_uses_issue(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", "letsencrypt.org")
    failure = await refused(dns_lab, "example.test", wildcard=True, method="dns-01")
    assert 'issue "letsencrypt.org"' in failure.detail
    dns_lab.zone.add_caa("example.test.", "issuewild", "ca.example")
    await check(dns_lab, "example.test", wildcard=True, method="dns-01")


async def test_accounturi(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", f"ca.example; accounturi={ACCOUNT}")
    await check(dns_lab)
    failure = await refused(dns_lab, account="https://ra.example:8443/acme/acme/account/someone-else")
    assert "is for another account (this account is https://ra.example:8443/acme/acme/account/someone-else)" in (
        failure.detail
    )


async def test_two_accounturi_are_unsatisfiable(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", f"ca.example; accounturi={ACCOUNT}; accounturi={ACCOUNT}")
    failure = await refused(dns_lab)
    assert "more than one accounturi" in failure.detail


async def test_validationmethods(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", "ca.example; validationmethods=dns-01,tls-alpn-01")
    await check(dns_lab, method="dns-01")
    await check(dns_lab, method="tls-alpn-01")
    failure = await refused(dns_lab, method="http-01")
    assert "does not allow the http-01 validation method" in failure.detail


async def test_one_satisfiable_record_is_enough(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", "ca.example; accounturi=https://elsewhere/1")
    dns_lab.zone.add_caa("example.test.", "issue", "other-brand.example; validationmethods=http-01")
    await check(dns_lab)


async def test_cname_is_followed(dns_lab: DnsLab) -> None:
    dns_lab.zone.add(f"{NAME}. 60 IN CNAME cdn.provider.test.")
    dns_lab.zone.add_caa("cdn.provider.test.", "issue", "letsencrypt.org")
    failure = await refused(dns_lab)
    assert failure.detail.startswith(f"CAA record for {NAME} prevents issuance")


async def test_servfail_refuses_with_a_dns_problem(dns_lab: DnsLab) -> None:
    dns_lab.zone.servfail.add("example.test.")
    failure = await refused(dns_lab)
    assert failure.to_data() == {"type": "dns", "detail": "DNS problem: SERVFAIL looking up CAA for example.test"}


async def test_off_without_identities_and_for_localhost(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("example.test.", "issue", ";")
    await check(dns_lab, identities=())
    await check(dns_lab, "myhost.localhost")


# After the challenge, in the job handler ---------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


class FakeMsg:
    headers = None

    async def ack(self) -> None:
        pass


async def run_job(db: Database, dns_lab: DnsLab, http_port: int, challenge_id: str) -> None:
    options = ValidationOptions(
        ValidationPorts(http_port, 443), LAB_POLICY, ("ca.example",), external_url="https://ra.example:8443"
    )
    async with new_http_client() as http:
        validator = ChallengeValidator(db, http, dns_lab.resolver(), options, authz_lifetime=dt.timedelta(days=1))
        await validator.handle(bus.ValidateJob(challenge_id=challenge_id), FakeMsg())  # type: ignore[arg-type]


async def test_job_refused_by_caa_after_a_good_challenge(db: Database, dns_lab: DnsLab, http_lab: HttpLab) -> None:
    rows = await insert_pending_order(db, "caa.example.test")
    dns_lab.zone.add("caa.example.test. 60 IN A 127.0.0.1")
    dns_lab.zone.add_caa("example.test.", "issue", "letsencrypt.org")
    http_lab.routes[f"/.well-known/acme-challenge/{rows.token}"] = (200, {}, rows.key_authorization.encode())
    await run_job(db, dns_lab, http_lab.port, rows.challenge_id)
    after = await snapshot(db, rows)
    assert len(http_lab.requests) == 1  # the challenge itself was checked first
    assert after["challenge"]["status"] == "invalid"
    assert after["challenge"]["error"]["type"] == "caa"
    assert after["order"]["status"] == "invalid"


async def test_job_accounturi_is_the_account_url_of_the_orders_provisioner(db: Database, dns_lab: DnsLab) -> None:
    rows = await insert_pending_order(db, "caa.example.test", challenge_type="dns-01", provisioner="team-a")
    account_url = f"https://ra.example:8443/acme/team-a/account/{rows.account_id}"
    dns_lab.zone.add(f'_acme-challenge.caa.example.test. 60 IN TXT "{txt_record_value(rows.key_authorization)}"')
    value = f"ca.example; accounturi={account_url}; validationmethods=dns-01"
    dns_lab.zone.add_caa("caa.example.test.", "issue", value)
    await run_job(db, dns_lab, 80, rows.challenge_id)
    after = await snapshot(db, rows)
    assert after["challenge"]["status"] == "valid", after["challenge"]["error"]


async def test_job_wildcard_uses_issuewild(db: Database, dns_lab: DnsLab) -> None:
    rows = await insert_pending_order(db, "wild.example.test", challenge_type="dns-01", wildcard=True)
    dns_lab.zone.add(f'_acme-challenge.wild.example.test. 60 IN TXT "{txt_record_value(rows.key_authorization)}"')
    dns_lab.zone.add_caa("wild.example.test.", "issue", "ca.example")
    dns_lab.zone.add_caa("wild.example.test.", "issuewild", "letsencrypt.org")
    await run_job(db, dns_lab, 80, rows.challenge_id)
    after = await snapshot(db, rows)
    assert after["challenge"]["error"]["type"] == "caa"
    assert 'issuewild "letsencrypt.org"' in after["challenge"]["error"]["detail"]
