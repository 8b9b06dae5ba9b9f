"""Fixtures for the tests against a real Pebble: Pebble itself, settings pointing the signer at
it (EAB, CA bundle, a sealing secret), a migrated SQLite database, the acme driver and helpers.

Pebble missing is a failure with the install line, never a skip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from acme_ra import bus
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import Certificate, Order, UpstreamAccount, UpstreamOrder
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.worker import IssueWorker
from tests.signer.conftest import insert_order, make_csr
from tests.support.bind import Bind
from tests.support.nats import nats_server

from .pebble import Pebble, require_pebble

SECRET = "upstream-tests-sealing-secret-0123456789"
# Short leases so that a "killed" job is taken over quickly.
TEST_LEASE_SECONDS = 1.5


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    """A running Pebble; without the pebble binary every test using it fails (never skips),
    naming the install line."""
    require_pebble()
    server = Pebble(tmp_path / "pebble")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bind(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Bind]:
    """BIND9 authoritative for the test module's ``ZONES`` (and the resolver Pebble asks)."""
    server = Bind(tmp_path / "bind", request.module.ZONES)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def validating_pebble(tmp_path: Path, bind: Bind) -> Iterator[Pebble]:
    """Pebble validating for real (no PEBBLE_VA_ALWAYS_VALID), resolving through ``bind``."""
    require_pebble()
    server = Pebble(tmp_path / "pebble", dns_server=bind.resolver_address)
    try:
        yield server
    finally:
        server.stop()


def signer_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings of a signer on ``database_url`` with ``ACME_RA_UPSTREAM=acme``, no NATS, no TLS
    files and no configuration file unless ``overrides`` say otherwise."""
    values: dict[str, Any] = {
        "state_dir": tmp_path / "var",
        "database_url": database_url,
        "external_url": "https://ra.example.test",
        "nats_url": "",
        "upstream": "acme",
        "tls_cert_file": None,
        "tls_key_file": None,
        "config_file": None,
        "secret_key": SecretStr(SECRET),
        "secret_key_file": None,
        "upstream_proxy": "",
        "upstream_http_timeout_seconds": 10.0,
    }
    values.update(overrides)
    return Settings(**values)


def acme_settings(tmp_path: Path, pebble: Pebble, database_url: str, **overrides: Any) -> Settings:
    """Settings of a signer using ``pebble`` as its one upstream (``ACME_RA_UPSTREAM_*``)."""
    values: dict[str, Any] = {
        "upstream_directory_url": pebble.directory_url,
        "upstream_eab_kid": pebble.eab_kid,
        "upstream_eab_hmac_key": SecretStr(pebble.eab_hmac_key),
        "upstream_eab_hmac_key_file": None,
        "upstream_email": "pki@example.test",
        "upstream_ca_bundle": pebble.ca_bundle,
        "upstream_cert_lifetime_days": None,
        "upstream_order_timeout_seconds": 30.0,
    }
    return signer_settings(tmp_path, database_url, **{**values, **overrides})


def for_pebble(settings: Settings, pebble: Pebble, **overrides: Any) -> Settings:
    """The same settings (same database, state dir) with ``pebble`` as the upstream."""
    values: dict[str, Any] = {
        "upstream_directory_url": pebble.directory_url,
        "upstream_eab_kid": pebble.eab_kid,
        "upstream_eab_hmac_key": SecretStr(pebble.eab_hmac_key),
        "upstream_ca_bundle": pebble.ca_bundle,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


@pytest.fixture
def settings(tmp_path: Path, pebble: Pebble, fresh_database_url: str) -> Settings:
    """SQLite, or PostgreSQL in the CI lane that sets ACME_RA_TEST_DATABASE_URL."""
    return acme_settings(tmp_path, pebble, fresh_database_url)


@pytest.fixture
def db_url(settings: Settings) -> str:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    return settings.effective_database_url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.dispose()


def make_acme_driver(settings: Settings, db: Database, **kwargs: Any) -> AcmeDriver:
    kwargs.setdefault("lease_seconds", TEST_LEASE_SECONDS)
    return AcmeDriver.from_settings(settings, db, **kwargs)


@pytest.fixture
async def driver(settings: Settings, db: Database) -> AsyncIterator[AcmeDriver]:
    acme = make_acme_driver(settings, db)
    try:
        yield acme
    finally:
        await acme.close()


class FakeMsg:
    """The JetStream message as the worker uses it."""

    def __init__(self) -> None:
        self.acks = 0

    async def ack(self) -> None:
        self.acks += 1

    async def in_progress(self) -> None:
        return None


async def new_order(db: Database, names: list[str], provisioner: str = "acme") -> str:
    order_id = await insert_order(db, names, make_csr(names))
    if provisioner != "acme":
        async with db.transaction() as session:
            order = await session.get(Order, order_id)
            assert order is not None
            order.provisioner = provisioner
    return order_id


async def run_job(worker: IssueWorker, order_id: str) -> FakeMsg:
    msg = FakeMsg()
    await worker.handle(bus.IssueJob(order_id=order_id), msg)
    return msg


async def order_row(db: Database, order_id: str) -> Order:
    async with db.sessions() as session:
        order = await session.get(Order, order_id)
        assert order is not None
        return order


async def upstream_order_row(db: Database, order_id: str) -> UpstreamOrder | None:
    async with db.sessions() as session:
        return await session.get(UpstreamOrder, order_id)


async def certificate_of(db: Database, order_id: str) -> Certificate:
    async with db.sessions() as session:
        certificate = (await session.execute(select(Certificate).where(Certificate.order_id == order_id))).scalar_one()
        return certificate


async def certificate_count(db: Database, order_id: str) -> int:
    async with db.sessions() as session:
        return int(
            await session.scalar(select(func.count()).select_from(Certificate).where(Certificate.order_id == order_id))
            or 0
        )


async def upstream_accounts(db: Database) -> list[UpstreamAccount]:
    async with db.sessions() as session:
        return list((await session.execute(select(UpstreamAccount))).scalars())


# NATS -------------------------------------------------------------------------------------------

@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    with nats_server(tmp_path / "jetstream") as server:
        yield server.url


async def wait_until(condition: Any, timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")
