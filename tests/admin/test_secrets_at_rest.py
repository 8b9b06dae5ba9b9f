"""Secrets at rest: a key per purpose (HKDF), values sealed by the older scheme still open and are
resealed by ``acme-ra secrets reseal``, and the nonce HMAC key is sealed like the others."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from acme_ra import eab
from acme_ra.config import ENV_PREFIX
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import EabKey, ServerKey, UpstreamAccount
from acme_ra.sealing import Sealer, SealError, derive_key, upstream_account_purpose
from acme_ra_frontend.nonces import NONCE_KEY_NAME, load_or_create_key
from tests.support.lab import base_environment

from .conftest import AdminApp, acme_ra

SECRET = b"a-sealing-secret-of-some-length"


def sealed_the_old_way(secret: bytes, plaintext: bytes, purpose: str) -> bytes:
    """What acme_ra.sealing wrote before keys were derived per purpose (version 1)."""
    nonce = os.urandom(12)
    key = hashlib.sha256(b"acme-ra sealing v1\x00" + secret).digest()
    return b"\x01" + nonce + AESGCM(key).encrypt(nonce, plaintext, purpose.encode())


def test_each_purpose_has_its_own_key() -> None:
    sealer = Sealer(SECRET)
    sealed = sealer.seal(b"hmac", "eab:kid-a")
    assert sealed[:1] == b"\x02" and sealer.open(sealed, "eab:kid-a") == b"hmac"
    with pytest.raises(SealError):
        sealer.open(sealed, "eab:kid-b")
    with pytest.raises(SealError):  # nor does it open as a version-1 value (the one shared key)
        sealer.open(b"\x01" + sealed[1:], "eab:kid-a")
    with pytest.raises(SealError):
        Sealer(b"another-secret-of-some-length").open(sealed, "eab:kid-a")
    assert derive_key(SECRET, "admin console session") != derive_key(SECRET, "other")
    assert len(derive_key(SECRET, "admin console session")) == 32


def test_values_sealed_the_old_way_still_open_and_reseal() -> None:
    sealer = Sealer(SECRET)
    old = sealed_the_old_way(SECRET, b"pem", "upstream-account:x")
    assert not Sealer.is_current(old) and sealer.open(old, "upstream-account:x") == b"pem"
    new = sealer.reseal(old, "upstream-account:x")
    assert new is not None and Sealer.is_current(new) and sealer.open(new, "upstream-account:x") == b"pem"
    assert sealer.reseal(new, "upstream-account:x") is None
    with pytest.raises(SealError):
        sealer.reseal(old, "upstream-account:y")


async def _old_rows(admin_app: AdminApp) -> tuple[str, str, bytes, bytes]:
    """An EAB key and an upstream account sealed the old way, beside an EAB key made today."""
    await admin_app.client.post("/api/eab-keys", json={"label": "new"}, headers=admin_app.auth)
    secret = admin_app.settings.sealing_secret()
    hmac_key, pem = os.urandom(32), b"-----BEGIN PRIVATE KEY-----\n..."
    async with admin_app.ops.db.transaction() as session:
        session.add(EabKey(kid="kid-old", hmac_key_sealed=sealed_the_old_way(secret, hmac_key, eab.sealing_purpose("kid-old"))))
        session.add(UpstreamAccount(id="acct-old", upstream="default", directory_url="https://ca.test/dir",
                                    key_sealed=sealed_the_old_way(secret, pem, upstream_account_purpose("acct-old"))))
    return "kid-old", "acct-old", hmac_key, pem


async def _sealed_values(admin_app: AdminApp) -> list[bytes]:
    async with admin_app.ops.db.transaction() as session:
        return [*(await session.execute(select(EabKey.hmac_key_sealed))).scalars(),
                *(await session.execute(select(UpstreamAccount.key_sealed))).scalars()]


async def test_the_reseal_command_rewrites_old_values(admin_app: AdminApp) -> None:
    kid, account_id, hmac_key, pem = await _old_rows(admin_app)
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(admin_app.settings.state_dir),
                                f"{ENV_PREFIX}DATABASE_URL": admin_app.settings.effective_database_url}
    done = await asyncio.to_thread(acme_ra, ["secrets", "reseal", "--json"], env, True)
    assert json.loads(done.stdout) == {"resealed": 2, "current": 1}
    assert all(Sealer.is_current(value) for value in await _sealed_values(admin_app))
    sealer = Sealer(admin_app.settings.sealing_secret())
    async with admin_app.ops.db.transaction() as session:
        key = await session.get(EabKey, kid)
        account = await session.get(UpstreamAccount, account_id)
        assert key is not None and account is not None
        assert sealer.open(key.hmac_key_sealed, eab.sealing_purpose(kid)) == hmac_key
        assert sealer.open(account.key_sealed, upstream_account_purpose(account_id)) == pem
    again = await asyncio.to_thread(acme_ra, ["secrets", "reseal"], env, True)
    assert "0 secrets resealed, 3 already current." in again.stdout


async def test_reseal_with_another_secret_writes_nothing(admin_app: AdminApp, tmp_path: Path) -> None:
    await _old_rows(admin_app)
    before = await _sealed_values(admin_app)
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path / "other"),
                                f"{ENV_PREFIX}SECRET_KEY": "not-the-secret-that-sealed-them",
                                f"{ENV_PREFIX}DATABASE_URL": admin_app.settings.effective_database_url}
    done = await asyncio.to_thread(acme_ra, ["secrets", "reseal"], env)
    assert done.returncode == 1 and "wrong ACME_RA_SECRET_KEY" in done.stderr, done.stderr
    assert await _sealed_values(admin_app) == before


async def test_the_nonce_key_is_sealed_at_rest(fresh_database_url: str) -> None:
    await asyncio.to_thread(upgrade, fresh_database_url)
    db = Database(fresh_database_url)
    try:
        sealer = Sealer(SECRET)
        key = await load_or_create_key(db, sealer)
        assert len(key) == 32 and await load_or_create_key(db, sealer) == key  # created once, then read
        async with db.transaction() as session:
            rows = {row.name: row.value for row in (await session.execute(select(ServerKey))).scalars()}
        assert list(rows) == [NONCE_KEY_NAME] and key not in rows[NONCE_KEY_NAME]
        assert sealer.open(rows[NONCE_KEY_NAME], f"server-key:{NONCE_KEY_NAME}") == key
        with pytest.raises(SealError):
            await load_or_create_key(db, Sealer(b"another-secret-of-some-length"))
    finally:
        await db.dispose()


async def test_migration_0009_drops_the_clear_nonce_key(fresh_database_url: str) -> None:
    await asyncio.to_thread(upgrade, fresh_database_url, "0007")
    db = Database(fresh_database_url)
    try:
        async with db.transaction() as session:
            session.add(ServerKey(name="nonce-hmac-v1", value=os.urandom(32)))
            session.add(ServerKey(name="another-key", value=b"kept"))
        await asyncio.to_thread(upgrade, fresh_database_url)
        async with db.transaction() as session:
            names = set((await session.execute(select(ServerKey.name))).scalars())
        assert names == {"another-key"}
    finally:
        await db.dispose()


def test_console_session_key_is_derived_per_purpose() -> None:
    from acme_ra_admin import console

    assert console.session_key(SECRET) == derive_key(SECRET, "admin console session")
