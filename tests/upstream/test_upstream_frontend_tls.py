"""The frontend's TLS certificate from the upstream CA: bootstrap, placeholder, renewal; and no CA
private key anywhere when the upstream is acme."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra_signer import bootstrap, frontend_tls
from acme_ra_signer.app import create_app
from acme_ra_signer.worker import IssueWorker

from .conftest import make_acme_driver, new_order, run_job, upstream_accounts, wait_until
from .pebble import Pebble


def leaf_and_issuers(settings: Settings) -> list[x509.Certificate]:
    cert_path, _ = settings.frontend_tls_paths
    return x509.load_pem_x509_certificates(cert_path.read_bytes())


def test_bootstrap_obtains_the_frontend_certificate_once(pebble: Pebble, settings: Settings, db_url: str) -> None:
    result = bootstrap.run(settings)
    assert result.frontend_cert == "issued" and not result.lab_ca_created
    chain = leaf_and_issuers(settings)
    assert chain[1] == pebble.intermediate()
    sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["ra.example.test"]
    assert x509.load_pem_x509_certificates(result.ca_bundle.read_bytes()) == [pebble.intermediate()]
    _cert_path, key_path = settings.frontend_tls_paths
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"

    # Every later start keeps it: no new upstream order.
    assert bootstrap.run(settings).frontend_cert == "kept"
    assert pebble.issued_count() == 1
    assert not settings.lab_ca_dir.exists()


def test_bootstrap_keeps_a_configured_pair_and_creates_no_ca(
    tmp_path: Path, pebble: Pebble, settings: Settings, db_url: str
) -> None:
    cert, key = tmp_path / "own.crt", tmp_path / "own.key"
    frontend_tls.write_placeholder(cert, key, ["ra.example.test"])
    settings = settings.model_copy(update={"tls_cert_file": cert, "tls_key_file": key})
    assert bootstrap.run(settings).frontend_cert == "configured"
    assert not settings.lab_ca_dir.exists() and not (settings.state_dir / "tls").exists()
    assert pebble.issued_count() == 0


async def test_placeholder_when_the_upstream_is_down_then_replaced_by_the_signer(
    pebble: Pebble, settings: Settings, db_url: str, nats_url: str
) -> None:
    pebble.stop()
    result = await asyncio.to_thread(bootstrap.run, settings)
    assert result.frontend_cert == "placeholder"
    cert_path, key_path = settings.frontend_tls_paths
    names = frontend_tls.frontend_names(settings.external_url)
    assert frontend_tls.condition(cert_path, key_path, names) == "placeholder"

    pebble.start()
    app = create_app(settings.model_copy(update={"nats_url": nats_url}))
    async with app.router.lifespan_context(app):

        async def replaced() -> bool:
            return frontend_tls.condition(cert_path, key_path, names) == "good"

        await wait_until(replaced, timeout=30)
    assert leaf_and_issuers(settings)[1] == pebble.intermediate()


async def test_renewal_at_two_thirds_of_the_lifetime(pebble: Pebble, settings: Settings, db: Database) -> None:
    driver = make_acme_driver(settings, db)
    try:
        assert await frontend_tls.ensure(settings, driver, at_bootstrap=False) == "issued"
        cert_path, key_path = settings.frontend_tls_paths
        names = frontend_tls.frontend_names(settings.external_url)
        leaf = leaf_and_issuers(settings)[0]
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        two_thirds = leaf.not_valid_before_utc + lifetime * 2 / 3
        assert frontend_tls.condition(cert_path, key_path, names, two_thirds - dt.timedelta(hours=1)) == "good"
        assert frontend_tls.condition(cert_path, key_path, names, two_thirds + dt.timedelta(hours=1)) == "renew"
        assert frontend_tls.condition(cert_path, key_path, ["other.example.test"]) == "renew"
        assert await frontend_tls.ensure(settings, driver, at_bootstrap=False) == "kept"
    finally:
        await driver.close()
    assert pebble.issued_count() == 1


async def test_no_ca_private_key_in_the_state_dir_or_the_database(
    pebble: Pebble, settings: Settings, db: Database
) -> None:
    await asyncio.to_thread(bootstrap.run, settings)
    driver = make_acme_driver(settings, db)
    try:
        await run_job(IssueWorker(db, driver), await new_order(db, ["leaf.example.test"]))
    finally:
        await driver.close()
    private_keys = []
    for path in settings.state_dir.rglob("*"):
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes():
            private_keys.append(path)
    assert private_keys == [settings.frontend_tls_paths[1]]
    key = serialization.load_pem_private_key(private_keys[0].read_bytes(), password=None)
    leaf = leaf_and_issuers(settings)[0]
    assert key.public_key() == leaf.public_key()
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert not constraints.ca
    except x509.ExtensionNotFound:
        pass
    assert not settings.lab_ca_dir.exists()
    for account in await upstream_accounts(db):
        assert b"PRIVATE KEY" not in account.key_sealed
