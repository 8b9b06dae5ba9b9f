"""The ``command`` upstream with a script around a real ``openssl ca`` (tests/support/openssl_ca):
issue and revoke, a refusal (the script's stderr is the client's problem), retry later (exit
75), a timeout, output that is not what was asked, and a command never run twice for an order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra_signer.upstream.base import UpstreamUnavailable
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.upstream.journal import DbJournal
from tests.support.openssl_ca import ISSUE, REVOKE, OpensslCa

from .backends import backend_settings, migrated, write_config
from .conftest import certificate_of, make_acme_driver, new_order, order_row, run_job, upstream_order_row

ZONE = "example.test"


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OpensslCa:
    authority = OpensslCa(tmp_path / "openssl-ca", ZONE)
    for name, value in authority.environment.items():  # the signer's environment reaches the command
        monkeypatch.setenv(name, value)
    return authority


def command_settings(tmp_path: Path, database_url: str, issue: Path = ISSUE, **keys: Any) -> Settings:
    upstream = {"type": "command", "issue": str(issue), "revoke": str(REVOKE), "timeout_seconds": 20, **keys}
    config = write_config(tmp_path / "acme-ra.yaml", {"upstreams": {"openssl": upstream}})
    return backend_settings(tmp_path, database_url, config)


@pytest.fixture
def settings(tmp_path: Path, ca: OpensslCa, fresh_database_url: str) -> Settings:
    return command_settings(tmp_path, fresh_database_url)


async def issue_job(db: Database, driver: AcmeDriver, names: list[str]) -> str:
    from acme_ra_signer.worker import IssueWorker

    order_id = await new_order(db, names)
    await run_job(IssueWorker(db, driver), order_id)
    return order_id


async def test_issues_and_revokes_with_openssl_ca(ca: OpensslCa, db: Database, driver: AcmeDriver) -> None:
    await driver.check()
    order_id = await issue_job(db, driver, ["www.example.test", "192.0.2.9"])
    order = await order_row(db, order_id)
    assert order.status == "valid", order.error
    certificate = await certificate_of(db, order_id)
    chain = x509.load_pem_x509_certificates(certificate.chain_pem.encode())
    assert chain[1] == ca.root
    chain[0].verify_directly_issued_by(ca.root)
    assert ca.index() == {certificate.serial: "V"}
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.state == "valid" and record.upstream == "openssl"

    await driver.revoke(chain[0].public_bytes(Encoding.DER), 1, order_id=order_id)
    assert ca.index() == {certificate.serial: "R"}
    await driver.revoke(chain[0].public_bytes(Encoding.DER), 1, order_id=order_id)  # already: fine


async def test_a_refusal_is_the_orders_problem_in_the_commands_words(
    ca: OpensslCa, db: Database, driver: AcmeDriver
) -> None:
    order_id = await issue_job(db, driver, ["www.other.test"])
    order = await order_row(db, order_id)
    assert order.status == "invalid"
    assert order.error == {
        "type": "rejectedIdentifier",
        "detail": 'upstream "openssl": refused: openssl-ca policy: www.other.test is outside example.test',
    }
    assert ca.index() == {}


async def test_exit_75_retries_the_job_later_and_records_nothing_signed(
    ca: OpensslCa, db: Database, driver: AcmeDriver
) -> None:
    with pytest.raises(UpstreamUnavailable, match="retry later: the CA is busy, try later"):
        await issue_job(db, driver, ["busy.example.test"])
    [order_id] = await _processing_orders(db)
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.state == "creating" and record.finalized_at is None


async def test_a_command_that_times_out_is_stopped_and_never_run_again(
    ca: OpensslCa, tmp_path: Path, fresh_database_url: str
) -> None:
    settings = command_settings(tmp_path, fresh_database_url, timeout_seconds=1)
    db = Database(await asyncio.to_thread(migrated, settings))
    driver = make_acme_driver(settings, db)
    try:
        started = asyncio.get_running_loop().time()
        order_id = await issue_job(db, driver, ["slow.example.test"])
        assert asyncio.get_running_loop().time() - started < 10
        order = await order_row(db, order_id)
        assert order.status == "invalid"
        assert order.error is not None and order.error["type"] == "serverInternal"
        assert "did not finish within 1s" in order.error["detail"]
        assert "upstreams.openssl.timeout_seconds" in order.error["detail"]
        assert "does not run the command again" in order.error["detail"]
    finally:
        await driver.close()
        await db.dispose()


async def test_a_command_interrupted_before_its_answer_is_not_run_again(
    ca: OpensslCa, db: Database, driver: AcmeDriver
) -> None:
    from acme_ra.db.models import utcnow
    from acme_ra_signer.worker import IssueWorker

    order_id = await new_order(db, ["interrupted.example.test"])
    async with DbJournal.claim(db, order_id, "openssl", 1.5) as journal:
        await journal.save(state="finalizing", finalized_at=utcnow())
    await run_job(IssueWorker(db, driver), order_id)
    order = await order_row(db, order_id)
    assert order.status == "invalid" and order.error is not None
    assert "may have signed" in order.error["detail"]
    assert ca.index() == {}


@pytest.mark.parametrize(
    ("output", "complaint"),
    [
        ("echo 'not a certificate'", "printed no PEM certificate chain on stdout"),
        ("cat \"$OPENSSL_CA_DIR/ca.pem\"", "printed a certificate for another key than the CSR's"),
    ],
    ids=["not-pem", "other-key"],
)
async def test_output_that_is_not_the_asked_certificate_fails_the_order(
    ca: OpensslCa, tmp_path: Path, fresh_database_url: str, output: str, complaint: str
) -> None:
    script = tmp_path / "bad-issue"
    script.write_text(f"#!/bin/sh\ncat >/dev/null\n{output}\n")
    script.chmod(0o755)
    settings = command_settings(tmp_path, fresh_database_url, issue=script)
    db = Database(await asyncio.to_thread(migrated, settings))
    driver = make_acme_driver(settings, db)
    try:
        order_id = await issue_job(db, driver, ["bad.example.test"])
        order = await order_row(db, order_id)
        assert order.status == "invalid"
        assert order.error == {
            "type": "serverInternal", "detail": f'upstream "openssl": its issue command {complaint}',
        }
    finally:
        await driver.close()
        await db.dispose()


async def test_the_command_sees_the_order_and_none_of_the_signers_settings(
    ca: OpensslCa, tmp_path: Path, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tmp_path / "seen-env"
    script = tmp_path / "env-issue"
    script.write_text(f"#!/bin/sh\nenv > {seen}\nexec {ISSUE}\n")
    script.chmod(0o755)
    monkeypatch.setenv("ACME_RA_SECRET_KEY", "must-not-leak-0123456789")
    settings = command_settings(tmp_path, fresh_database_url, issue=script)
    db = Database(await asyncio.to_thread(migrated, settings))
    driver = make_acme_driver(settings, db)
    try:
        order_id = await issue_job(db, driver, ["env.example.test", "www.env.example.test"])
        assert (await order_row(db, order_id)).status == "valid"
    finally:
        await driver.close()
        await db.dispose()
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["ACME_RA_ORDER_ID"] == order_id
    assert env["ACME_RA_NAMES"] == "env.example.test,www.env.example.test"
    assert env["ACME_RA_PROFILE"] == "" and env["ACME_RA_UPSTREAM"] == "openssl"
    assert "ACME_RA_SECRET_KEY" not in env and env["OPENSSL_CA_DIR"] == str(ca.dir)


async def _processing_orders(db: Database) -> list[str]:
    from sqlalchemy import select

    from acme_ra.db.models import Order

    async with db.sessions() as session:
        return list((await session.execute(select(Order.id).where(Order.status == "processing"))).scalars())


async def test_profiles_route_orders_between_a_command_and_the_lab_ca(
    ca: OpensslCa, tmp_path: Path, fresh_database_url: str
) -> None:
    from acme_ra.db.models import Order
    from acme_ra_signer import labca

    config = write_config(tmp_path / "routes.yaml", {
        "upstreams": {"openssl": {"type": "command", "issue": str(ISSUE), "revoke": str(REVOKE)}, "lab": {"type": "lab"}},
        "default_upstream": "openssl",
        "profiles": {"lab": {"upstream": "lab"}},
    })
    settings = backend_settings(tmp_path, fresh_database_url, config)
    db = Database(await asyncio.to_thread(migrated, settings))
    driver = make_acme_driver(settings, db)
    try:
        lab_order = await new_order(db, ["lab.example.test"])
        async with db.transaction() as session:
            order = await session.get(Order, lab_order)
            assert order is not None
            order.profile = "lab"
        from acme_ra_signer.worker import IssueWorker

        await run_job(IssueWorker(db, driver), lab_order)
        command_order = await issue_job(db, driver, ["cmd.example.test"])
        lab_chain = x509.load_pem_x509_certificates((await certificate_of(db, lab_order)).chain_pem.encode())
        lab_chain[0].verify_directly_issued_by(labca.load_or_create(settings.lab_ca_dir)[0].intermediate)
        command_cert = await certificate_of(db, command_order)
        assert ca.index() == {command_cert.serial: "V"}  # the lab order never reached openssl ca
        lab_record = await upstream_order_row(db, lab_order)
        assert lab_record is not None and (lab_record.upstream, lab_record.state) == ("lab", "valid")
        # Each certificate is revoked by the upstream that issued it (the journal names it).
        await driver.revoke(lab_chain[0].public_bytes(Encoding.DER), 4, order_id=lab_order)
        assert ca.index() == {command_cert.serial: "V"}
        command_leaf = x509.load_pem_x509_certificates(command_cert.chain_pem.encode())[0]
        await driver.revoke(command_leaf.public_bytes(Encoding.DER), 4, order_id=command_order)
        assert ca.index() == {command_cert.serial: "R"}
        assert {u["name"]: u["type"] for u in driver.describe()} == {"openssl": "command", "lab": "lab"}
    finally:
        await driver.close()
        await db.dispose()
