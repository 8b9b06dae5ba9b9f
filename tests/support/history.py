"""Order history as the services write it, with the times a test chooses: for retention and
inventory tests (pytest fixtures ``history_url``, ``history_db`` and ``history``; a plugin of
tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import (
    Account,
    Authorization,
    Certificate,
    Challenge,
    Order,
    OrderAuthorization,
    UpstreamOrder,
    new_id,
)
from tests.support import database


def certificate_pem(*names: str, issuer: str = "Test Issuing CA") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def history_url(tmp_path: Path) -> Iterator[str]:
    with database.fresh_database(tmp_path / "db") as url:
        upgrade(url)
        yield url


@pytest.fixture
async def history_db(history_url: str) -> AsyncIterator[Database]:
    db = Database(history_url)
    try:
        yield db
    finally:
        await db.dispose()


class History:
    """Rows as the services write them, with the times a test chooses."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.account = new_id()

    async def start(self) -> None:
        async with self.db.transaction() as session:
            session.add(Account(id=self.account, key_thumbprint=new_id(), jwk={"kty": "EC"}))

    async def order(self, status: str, expires: dt.datetime, *, not_after: dt.datetime | None = None,
                    revoked: bool = False, authz: list[str] | None = None, authz_expires: dt.datetime | None = None,
                    journal: bool = True, names: str = "a.example.org", upstream: str | None = "default",
                    profile: str | None = None, created: dt.datetime | None = None) -> tuple[str, list[str]]:
        """An order with one new authorization (or links to ``authz``), its challenge, its journal
        row (at ``upstream``; None: none, as for the lab CA) and, given ``not_after``, its certificate
        for ``names`` (the inventory's names hash); returns (order id, its authorization ids)."""
        order_id, certificate_id = new_id(), new_id() if not_after else None
        async with self.db.transaction() as session:
            session.add(Order(id=order_id, account_id=self.account, provisioner="acme", status=status, expires=expires,
                              identifiers=[{"type": "dns", "value": names}], certificate_id=certificate_id,
                              profile=profile))
            await session.flush()
            if authz is None:
                authz = [new_id()]
                session.add(Authorization(id=authz[0], account_id=self.account, identifier_type="dns",
                                          identifier_value="a.example.org", status="valid",
                                          expires=authz_expires or expires))
                await session.flush()
                session.add(Challenge(authz_id=authz[0], type="http-01", status="valid"))
            for position, authz_id in enumerate(authz):
                session.add(OrderAuthorization(order_id=order_id, authz_id=authz_id, position=position))
            if journal and upstream is not None:
                session.add(UpstreamOrder(order_id=order_id, upstream=upstream, state="valid"))
            if not_after is not None:
                session.add(Certificate(id=certificate_id, order_id=order_id, account_id=self.account, serial=new_id(),
                                        chain_pem=certificate_pem(*names.split(","), issuer="History CA"), not_before=not_after - dt.timedelta(days=90),
                                        not_after=not_after, revoked_at=not_after if revoked else None,
                                        revocation_reason=1 if revoked else None,
                                        names_sha256=hashlib.sha256(names.encode()).hexdigest(),
                                        issuer="CN=History CA", created_at=created or not_after - dt.timedelta(days=90)))
        return order_id, authz

    async def present(self, model: type, ids: list[str], column: str = "id") -> list[str]:
        async with self.db.transaction() as session:
            found = await session.execute(select(getattr(model, column)).where(getattr(model, column).in_(ids)))
            return sorted(found.scalars())

    async def counts(self) -> dict[str, int]:
        models = {"orders": Order, "certificates": Certificate, "authorizations": Authorization,
                  "challenges": Challenge, "upstream_orders": UpstreamOrder, "order_authorizations": OrderAuthorization}
        async with self.db.transaction() as session:
            return {name: (await session.execute(select(func.count()).select_from(model))).scalar_one()
                    for name, model in models.items()}


@pytest.fixture
async def history(history_db: Database) -> History:
    history = History(history_db)
    await history.start()
    return history
