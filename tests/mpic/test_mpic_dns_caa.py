"""dns-01 and CAA through the perspectives: each perspective looks the records up with its own
resolver, so a perspective whose DNS tells another story is outvoted (or, two of three, wins)."""

from __future__ import annotations

import pytest

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra_validator.dns01 import txt_record_value
from tests.validator.rows import PendingOrder, insert_pending_order

from .conftest import REGIONS, MpicLab, Web, wait_for_outcome
from .test_mpic_quorum import OUTCOME_TIMEOUT_SECONDS, _by_name, _validate

pytestmark = pytest.mark.integration


async def _start(lab: MpicLab, **primary_env: str) -> None:
    names = ["p1", "p2", "p3"]
    for name in [*names, "primary"]:
        lab.resolver(name)
    started = [lab.start_perspective(name, REGIONS[i]) for i, name in enumerate(names)]
    started.append(lab.start_primary(3, 40.0, **primary_env))
    for process in started:
        await process.ready()
    await lab.processes["primary"].heard(3)


async def _validate_job(lab: MpicLab, db: Database, rows: PendingOrder) -> dict[str, object]:
    """Publish the challenge's validation job as a frontend would; its outcome and record."""
    nc = await lab.operator()
    try:
        job = bus.ValidateJob(challenge_id=rows.challenge_id, order_id=rows.order_id)
        await bus.publish_job(nc.jetstream(), bus.SUBJECT_VALIDATE, job, f"validate-{rows.challenge_id}")
    finally:
        await nc.close()
    return await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)


async def test_dns01_seen_wrong_by_one_perspective(mpic_lab: tuple[MpicLab, Web]) -> None:
    lab, _web = mpic_lab
    await _start(lab)
    db = Database(lab.database_url)
    try:
        rows = await insert_pending_order(db, "dns.mpic.test", "dns-01")
        right = txt_record_value(rows.key_authorization)
        for name, resolver in lab.resolvers.items():
            value = "a-hijacker-s-value" if name == "p1" else right
            resolver.zone.add(f'_acme-challenge.dns.mpic.test. 0 TXT "{value}"')
        outcome = await _validate_job(lab, db, rows)
    finally:
        await db.dispose()
    assert outcome["status"] == "valid", outcome
    record = outcome["record"]
    assert isinstance(record, dict) and record["quorum"] == "2/3"
    p1 = _by_name(record)["p1"]
    assert p1["outcome"] == "invalid" and p1["problem"]["type"] == "unauthorized"
    assert "a-hijacker-s-value" in p1["problem"]["detail"]


@pytest.mark.parametrize(("forbidding", "status"), [({"p1"}, "valid"), ({"p1", "p2"}, "invalid")])
async def test_caa_seen_by_each_perspective(mpic_lab: tuple[MpicLab, Web], forbidding: set[str], status: str) -> None:
    """A CAA record naming another CA, seen by some perspectives only (the primary's own
    identities and account URL travel with each request)."""
    lab, web = mpic_lab
    await _start(lab, ACME_RA_CAA_IDENTITIES="ca.example")
    domain = f"caa{len(forbidding)}.mpic.test"
    for name in forbidding:
        lab.resolver(name).zone.add_caa(domain + ".", "issue", "another-ca.example")
    rows, db = await _validate(lab, web, domain, set())
    try:
        outcome = await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)
    finally:
        await db.dispose()
    assert outcome["status"] == status, outcome
    record = outcome["record"]
    assert isinstance(record, dict)
    results = _by_name(record)
    for name in forbidding:
        assert results[name]["outcome"] == "invalid" and results[name]["problem"]["type"] == "caa"
    if status == "invalid":
        error = outcome["error"]
        assert isinstance(error, dict) and error["type"] == "caa"


@pytest.mark.parametrize(("hijacked", "status"), [({"p1"}, "valid"), ({"p1", "p2"}, "invalid")])
async def test_dns_persist01_through_perspectives(mpic_lab: tuple[MpicLab, Web], hijacked: set[str],
                                                  status: str) -> None:
    """A dns-persist-01 record read by each perspective with its own resolver: the issuer domain
    names travel with the request (the perspectives have none configured), and a perspective that
    sees a record naming another account disagrees."""
    lab, _web = mpic_lab
    await _start(lab, ACME_RA_EXTERNAL_URL="https://ra.mpic.test", ACME_RA_CHALLENGE_TYPES="dns-01,dns-persist-01",
                 ACME_RA_DNS_PERSIST_ISSUER_DOMAINS="ra.mpic.test")
    domain = f"persist{len(hijacked)}.mpic.test"
    db = Database(lab.database_url)
    try:
        rows = await insert_pending_order(db, domain, "dns-persist-01")
        ours = f"https://ra.mpic.test/acme/acme/account/{rows.account_id}"
        for name, resolver in lab.resolvers.items():
            account = "https://ra.mpic.test/acme/acme/account/someone-else" if name in hijacked else ours
            resolver.zone.add(f'_validation-persist.{domain}. 0 TXT "ra.mpic.test; accounturi={account}"')
        outcome = await _validate_job(lab, db, rows)
    finally:
        await db.dispose()
    assert outcome["status"] == status, outcome
    record = outcome["record"]
    assert isinstance(record, dict)
    results = _by_name(record)
    for name in {"p1", "p2", "p3"} - hijacked:
        assert results[name]["outcome"] == "valid", results[name]
    for name in hijacked:
        assert results[name]["outcome"] == "invalid" and "another account" in results[name]["problem"]["detail"]
    if status == "valid":
        assert record["quorum"] == "2/3"
