"""The ``vault`` upstream against a real OpenBao (``bao server -dev``) with a PKI mount: issue,
revoke, token file and AppRole (logging in again once the token expired), Vault's refusal as
the order's problem, Vault down, and the journal's guarantees (never a second sign request)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import utcnow
from acme_ra_signer.upstream.base import IssueRequest, UpstreamUnavailable
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.upstream.journal import DbJournal
from acme_ra_signer.upstream.vault import vault_serial
from acme_ra_signer.worker import IssueWorker
from acme_ra_tools.supervisor import free_port

from .backends import backend_settings, migrated, write_config
from .conftest import certificate_of, make_acme_driver, new_order, order_row, run_job, upstream_order_row
from .openbao import MOUNT, ROLE, OpenBao

NAMES = ["www.example.test", "api.example.test", "192.0.2.7"]


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    server = OpenBao(tmp_path_factory.mktemp("openbao"), ["example.test"])
    try:
        yield server
    finally:
        server.stop()


def vault_config(tmp_path: Path, bao: OpenBao, **auth: object) -> Path:
    if not auth:
        auth = {"token_file": str(bao.token_file(tmp_path / "token"))}
    upstream = {"type": "vault", "url": bao.url, "mount": MOUNT, "role": ROLE, **auth}
    return write_config(tmp_path / "acme-ra.yaml", {"upstreams": {"bao": upstream}})


@pytest.fixture
def settings(tmp_path: Path, bao: OpenBao, fresh_database_url: str) -> Settings:
    return backend_settings(tmp_path, fresh_database_url, vault_config(tmp_path, bao))


async def test_issues_and_revokes_through_openbao_with_a_token_file(
    bao: OpenBao, db: Database, driver: AcmeDriver
) -> None:
    await driver.check()
    before = set(bao.issued())
    order_id = await new_order(db, NAMES)
    msg = await run_job(IssueWorker(db, driver), order_id)
    assert msg.acks == 1
    order = await order_row(db, order_id)
    assert order.status == "valid", order.error

    certificate = await certificate_of(db, order_id)
    chain = x509.load_pem_x509_certificates(certificate.chain_pem.encode())
    leaf = chain[0]
    leaf.verify_directly_issued_by(bao.root)
    assert chain[-1] == bao.root
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(NAMES[:2])
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    serial = vault_serial(leaf.serial_number)
    assert set(bao.issued()) - before == {serial}  # exactly one sign request
    assert bao.cert(serial)["revocation_time"] in (0, "0")

    record = await upstream_order_row(db, order_id)
    assert record is not None and record.upstream == "bao" and record.state == "valid"
    assert record.certificate_url == f"{bao.url}/v1/{MOUNT}/cert/{serial}" and record.lease_owner is None

    await driver.revoke(leaf.public_bytes(Encoding.DER), 1, order_id=order_id)
    assert int(bao.cert(serial)["revocation_time"]) > 0
    await driver.revoke(leaf.public_bytes(Encoding.DER), 1, order_id=order_id)  # again: still fine
    assert driver.describe() == [{
        "name": "bao", "type": "vault", "url": bao.url, "mount": MOUNT, "role": ROLE, "auth": "token_file",
        "authz_strategy": None, "dns_update": None, "breaker": {"state": "closed", "consecutive_failures": 0},
    }]


async def test_approle_logs_in_again_once_its_token_expired(
    bao: OpenBao, tmp_path: Path, fresh_database_url: str
) -> None:
    role_id, secret_id = bao.approle(tmp_path / "approle", token_ttl="2s", token_max_ttl="3s")
    config = vault_config(tmp_path, bao, approle_role_id_file=str(role_id), approle_secret_id_file=str(secret_id))
    settings = backend_settings(tmp_path, fresh_database_url, config)
    db = Database(await asyncio.to_thread(migrated, settings))
    driver = make_acme_driver(settings, db)
    try:
        await driver.check()
        first = await new_order(db, ["approle-1.example.test"])
        await run_job(IssueWorker(db, driver), first)
        assert (await order_row(db, first)).status == "valid"
        await asyncio.sleep(3.5)  # past the token's max TTL: renewal cannot help, a new login must
        second = await new_order(db, ["approle-2.example.test"])
        await run_job(IssueWorker(db, driver), second)
        order = await order_row(db, second)
        assert order.status == "valid", order.error
        assert driver.describe()[0]["auth"] == "approle"
    finally:
        await driver.close()
        await db.dispose()


async def test_a_name_the_role_denies_fails_the_order_with_vaults_words(
    bao: OpenBao, db: Database, driver: AcmeDriver
) -> None:
    before = bao.issued()
    order_id = await new_order(db, ["www.not-allowed.test"])
    await run_job(IssueWorker(db, driver), order_id)
    order = await order_row(db, order_id)
    assert order.status == "invalid"
    assert order.error == {
        "type": "rejectedIdentifier",
        "detail": 'upstream "bao": refused: common name www.not-allowed.test not allowed by this role',
    }
    assert bao.issued() == before
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.state == "invalid"


async def test_vault_unreachable_retries_the_job_and_records_nothing_sent(
    bao: OpenBao, tmp_path: Path, fresh_database_url: str
) -> None:
    config = write_config(tmp_path / "down.yaml", {"upstreams": {"bao": {
        "type": "vault", "url": f"http://127.0.0.1:{free_port()}", "mount": MOUNT, "role": ROLE,
        "token_file": str(bao.token_file(tmp_path / "token")),
    }}})
    settings = backend_settings(tmp_path, fresh_database_url, config)
    db = Database(await asyncio.to_thread(migrated, settings))
    driver = make_acme_driver(settings, db)
    try:
        with pytest.raises(UpstreamUnavailable, match="bao"):
            await driver.check()
        order_id = await new_order(db, ["down.example.test"])
        with pytest.raises(UpstreamUnavailable, match="upstream bao: ConnectError"):
            await run_job(IssueWorker(db, driver), order_id)
        assert (await order_row(db, order_id)).status == "processing"  # the job is retried later
    finally:
        await driver.close()
        await db.dispose()


async def test_a_sign_request_whose_answer_was_lost_is_never_sent_again(
    bao: OpenBao, db: Database, driver: AcmeDriver
) -> None:
    order_id = await new_order(db, ["lost.example.test"])
    # A signer died after recording that it sends the sign request, before recording the answer.
    async with DbJournal.claim(db, order_id, "bao", 1.5) as journal:
        await journal.save(state="finalizing", finalized_at=utcnow())
    before = bao.issued()
    await run_job(IssueWorker(db, driver), order_id)
    order = await order_row(db, order_id)
    assert order.status == "invalid"
    assert order.error is not None and order.error["type"] == "serverInternal"
    assert 'upstream "bao": may have signed' in order.error["detail"] and "does not ask again" in order.error["detail"]
    assert bao.issued() == before


async def test_a_recorded_serial_is_read_back_not_signed_again(
    bao: OpenBao, db: Database, driver: AcmeDriver
) -> None:
    names = ["readback.example.test"]
    order_id = await new_order(db, names)
    order = await order_row(db, order_id)
    # Signed and recorded, but the signer died before storing the certificate.
    assert order.csr is not None  # finalized
    signed = await driver.issue(IssueRequest(order_id, order.csr, order.identifiers))
    issued = bao.issued()
    await run_job(IssueWorker(db, driver), order_id)
    assert (await order_row(db, order_id)).status == "valid"
    certificate = await certificate_of(db, order_id)
    assert certificate.serial == signed.serial_hex
    assert certificate.chain_pem == signed.chain_pem
    assert bao.issued() == issued
