"""The persistent upstream account: EAB mistakes reported clearly, loss recovered, several upstreams."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import SecretStr

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import Order, UpstreamAccount, UpstreamOrder
from acme_ra.sealing import Sealer, upstream_account_purpose
from acme_ra_signer.upstream.accounts import AccountRefused
from acme_ra_signer.upstream.acme import AcmeUpstream
from acme_ra_signer.upstream.acme_client import AccountKey
from acme_ra_signer.upstream.base import UpstreamUnavailable
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.worker import IssueWorker

from .conftest import (
    SECRET,
    certificate_of,
    for_pebble,
    make_acme_driver,
    new_order,
    order_row,
    run_job,
    upstream_accounts,
)
from .pebble import Pebble, b64url

WRONG_HMAC = b64url(b"\x01" * 32)
REPO = Path(__file__).resolve().parents[2]


def signer_env(tmp_path: Path, pebble: Pebble, database_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ACME_RA_")}
    env.update(
        {
            "ACME_RA_STATE_DIR": str(tmp_path / "var"),
            "ACME_RA_DATABASE_URL": database_url,
            "ACME_RA_UPSTREAM": "acme",
            "ACME_RA_UPSTREAM_DIRECTORY_URL": pebble.directory_url,
            "ACME_RA_UPSTREAM_EAB_KID": pebble.eab_kid,
            "ACME_RA_UPSTREAM_EAB_HMAC_KEY": pebble.eab_hmac_key,
            "ACME_RA_UPSTREAM_CA_BUNDLE": str(pebble.ca_bundle),
            "ACME_RA_SECRET_KEY": SECRET,
        }
    )
    env.update(extra)
    return env


def run_signer_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "acme_ra_signer", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60, check=False,
    )


async def test_wrong_eab_key_is_a_clear_error_naming_the_variable(
    pebble: Pebble, settings: Settings, db: Database
) -> None:
    driver = make_acme_driver(for_pebble(settings, pebble, upstream_eab_hmac_key=SecretStr(WRONG_HMAC)), db)
    try:
        with pytest.raises(AccountRefused) as refused:
            await driver.check()
        message = str(refused.value)
        assert "refused the account registration" in message
        assert "ACME_RA_UPSTREAM_EAB_KID" in message and "ACME_RA_UPSTREAM_EAB_HMAC_KEY" in message
        assert WRONG_HMAC not in message

        # An order waiting for the upstream is retried (not failed) until the operator fixes it.
        order_id = await new_order(db, ["eab.example.test"])
        with pytest.raises(UpstreamUnavailable):
            await run_job(IssueWorker(db, driver), order_id)
        assert (await order_row(db, order_id)).status == "processing"
    finally:
        await driver.close()
    [account] = await upstream_accounts(db)
    assert account.url is None and account.registrations == 0


def test_check_upstream_command_reports_a_wrong_eab_key(tmp_path: Path, pebble: Pebble, db_url: str) -> None:
    bad = run_signer_command(
        signer_env(tmp_path, pebble, db_url, ACME_RA_UPSTREAM_EAB_HMAC_KEY=WRONG_HMAC), "check-upstream"
    )
    assert bad.returncode == 1
    assert "upstream default: not ready" in bad.stderr and "ACME_RA_UPSTREAM_EAB_HMAC_KEY" in bad.stderr

    good = run_signer_command(signer_env(tmp_path, pebble, db_url), "check-upstream")
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("upstream default: ready (account https://127.0.0.1:")


def test_missing_secret_is_a_one_line_configuration_error(tmp_path: Path, pebble: Pebble) -> None:
    env = signer_env(tmp_path, pebble, "sqlite+aiosqlite:///unused.db", ACME_RA_NATS_URL="nats://127.0.0.1:1")
    del env["ACME_RA_SECRET_KEY"]
    result = run_signer_command(env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        ("acme-ra: invalid configuration: ACME_RA_SECRET_KEY: required when ACME_RA_UPSTREAM=acme (it seals "
        "the upstream account key in the database); set it, or ACME_RA_SECRET_KEY_FILE, "
        "to the same value on every signer")
    ]


def test_half_an_eab_pair_is_a_one_line_configuration_error(tmp_path: Path, pebble: Pebble) -> None:
    env = signer_env(tmp_path, pebble, "sqlite+aiosqlite:///unused.db", ACME_RA_NATS_URL="nats://127.0.0.1:1")
    del env["ACME_RA_UPSTREAM_EAB_HMAC_KEY"]
    result = run_signer_command(env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "acme-ra: invalid configuration: ACME_RA_UPSTREAM_EAB_HMAC_KEY: the EAB key id and HMAC key go together"
    )


async def test_account_lost_upstream_is_registered_again(pebble: Pebble, db: Database, driver: AcmeDriver) -> None:
    worker = IssueWorker(db, driver)
    first = await new_order(db, ["before.example.test"])
    await run_job(worker, first)
    [account] = await upstream_accounts(db)
    assert account.registrations == 1
    old_url = account.url

    pebble.restart()  # Pebble forgets every account

    second = await new_order(db, ["after.example.test"])
    await run_job(worker, second)
    assert (await order_row(db, second)).status == "valid"
    [account] = await upstream_accounts(db)
    assert account.registrations == 2 and account.url != old_url
    serial = (await certificate_of(db, second)).serial
    assert pebble.cert_status(serial)["Status"] == "Valid"
    await driver.check()


async def test_orders_go_to_the_upstream_their_provisioner_selects(
    tmp_path: Path, settings: Settings, db: Database
) -> None:
    rsa = Pebble(tmp_path / "pebble-rsa")
    ecc = Pebble(tmp_path / "pebble-ecc")
    hmac_file = tmp_path / "ecc.hmac"
    hmac_file.write_text(ecc.eab_hmac_key + "\n")
    config = tmp_path / "acme-ra.yaml"
    config.write_text(
        f"""
upstreams:
  incommon-rsa:
    directory_url: {rsa.directory_url}
    eab_kid: {rsa.eab_kid}
    eab_hmac_key: {rsa.eab_hmac_key}
    ca_bundle: {rsa.ca_bundle}
    account_key_type: rsa2048
  incommon-ecc:
    directory_url: {ecc.directory_url}
    eab_kid: {ecc.eab_kid}
    eab_hmac_key_file: {hmac_file}
    ca_bundle: {ecc.ca_bundle}
    account_key_type: ec256
default_upstream: incommon-rsa
provisioners:
  ecc: {{upstream: incommon-ecc}}
profiles:
  tlsserver-ecc: incommon-ecc
"""
    )
    configured = settings.model_copy(
        update={
            "config_file": config,
            "upstream_directory_url": "",
            "upstream_eab_kid": "",
            "upstream_eab_hmac_key": None,
        }
    )
    driver = make_acme_driver(configured, db)
    try:
        worker = IssueWorker(db, driver)
        default_order = await new_order(db, ["rsa.example.test"])
        ecc_order = await new_order(db, ["ecc.example.test"], provisioner="ecc")
        profile_order = await new_order(db, ["profile.example.test"])
        async with db.transaction() as session:
            row = await session.get(Order, profile_order)
            assert row is not None
            row.profile = "tlsserver-ecc"
        for order_id in (default_order, ecc_order, profile_order):
            await run_job(worker, order_id)
            assert (await order_row(db, order_id)).status == "valid"
        assert rsa.issued_count() == 1 and ecc.issued_count() == 2
        async with db.sessions() as session:
            assert (await session.get(UpstreamOrder, ecc_order)).upstream == "incommon-ecc"  # type: ignore[union-attr]
            assert (await session.get(UpstreamOrder, default_order)).upstream == "incommon-rsa"  # type: ignore[union-attr]
        accounts = {a.upstream: a for a in await upstream_accounts(db)}
        assert set(accounts) == {"incommon-rsa", "incommon-ecc"}
        ecc_leaf = (await certificate_of(db, ecc_order)).chain_pem
        assert x509.load_pem_x509_certificates(ecc_leaf.encode())[1] == ecc.intermediate()
    finally:
        await driver.close()
        rsa.stop()
        ecc.stop()


async def test_a_stored_rsa_account_keeps_its_key_when_the_default_is_ec256(
    pebble: Pebble, settings: Settings, db: Database
) -> None:
    """The key type is read from the stored key: changing ACME_RA_UPSTREAM_ACCOUNT_KEY_TYPE (or
    its default, ec256 since rsa2048) makes no new account; only a new account gets the new type."""

    def stored_alg(account: UpstreamAccount) -> str:
        pem = Sealer(settings.sealing_secret()).open(account.key_sealed, upstream_account_purpose(account.id))
        return str(AccountKey.from_pem(pem).alg.name)

    assert Settings.model_fields["upstream_account_key_type"].default == "ec256"
    old = make_acme_driver(for_pebble(settings, pebble, upstream_account_key_type="rsa2048"), db)
    try:
        await run_job(IssueWorker(db, old), await new_order(db, ["rsa-before.example.test"]))
    finally:
        await old.close()
    [account] = await upstream_accounts(db)
    assert stored_alg(account) == "RS256"

    upgraded = make_acme_driver(settings, db)  # the default key type, ec256
    try:
        order_id = await new_order(db, ["rsa-after.example.test"])
        await run_job(IssueWorker(db, upgraded), order_id)
        assert (await order_row(db, order_id)).status == "valid"
        selected = upgraded.select()
        assert isinstance(selected, AcmeUpstream)
        known = selected.accounts.known
        assert known is not None and known.key.alg.name == "RS256"
    finally:
        await upgraded.close()
    [same] = await upstream_accounts(db)
    assert same.id == account.id and same.url == account.url and same.registrations == 1
    assert stored_alg(same) == "RS256"

    fresh = Pebble(pebble.workdir.parent / "pebble-new")  # another upstream: a new account, ec256
    try:
        driver = make_acme_driver(for_pebble(settings, fresh), db)
        try:
            await driver.check()
        finally:
            await driver.close()
    finally:
        fresh.stop()
    [new] = [a for a in await upstream_accounts(db) if a.directory_url == fresh.directory_url]
    assert stored_alg(new) == "ES256"
