"""Rows of one pending order with one authorization and one challenge, as the frontend leaves
them after a challenge POST (challenge ``processing``)."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

import josepy
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from acme_ra.db.engine import Database
from acme_ra.db.models import Account, Authorization, Challenge, Order, OrderAuthorization, utcnow
from acme_ra.protocol.jws import key_authorization


@dataclass
class PendingOrder:
    account_id: str
    order_id: str
    authz_id: str
    challenge_id: str
    token: str
    jwk: dict[str, Any]

    @property
    def key_authorization(self) -> str:
        return key_authorization(self.token, self.jwk)


async def insert_pending_order(
    db: Database,
    domain: str,
    challenge_type: str = "http-01",
    *,
    identifier_type: str = "dns",
    wildcard: bool = False,
    provisioner: str = "acme",
) -> PendingOrder:
    """``domain`` is the authorization's value (without "*." for a wildcard)."""
    key = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    jwk = key.public_key().to_json()
    thumbprint = base64.urlsafe_b64encode(key.thumbprint()).rstrip(b"=").decode()
    expires = utcnow() + dt.timedelta(days=1)
    async with db.transaction() as session:
        account = Account(key_thumbprint=thumbprint, jwk=jwk)
        session.add(account)
        await session.flush()
        order = Order(
            account_id=account.id,
            provisioner=provisioner,
            expires=expires,
            identifiers=[{"type": identifier_type, "value": ("*." if wildcard else "") + domain}],
            not_before=None,
            not_after=None,
        )
        authz = Authorization(
            account_id=account.id,
            identifier_type=identifier_type,
            identifier_value=domain,
            wildcard=wildcard,
            expires=expires,
        )
        session.add_all([order, authz])
        await session.flush()
        session.add(OrderAuthorization(order_id=order.id, authz_id=authz.id, position=0))
        challenge = Challenge(authz_id=authz.id, type=challenge_type, status="processing", validated=None)
        session.add(challenge)
        await session.flush()
        return PendingOrder(account.id, order.id, authz.id, challenge.id, challenge.token, jwk)


async def snapshot(db: Database, rows: PendingOrder) -> dict[str, dict[str, Any]]:
    """The challenge, authorization and order rows as plain dicts."""
    async with db.sessions() as session:
        found: dict[str, dict[str, Any]] = {}
        for name, model, row_id in (
            ("challenge", Challenge, rows.challenge_id),
            ("authz", Authorization, rows.authz_id),
            ("order", Order, rows.order_id),
        ):
            row = (await session.execute(select(model).where(model.id == row_id))).scalar_one()
            found[name] = {column.name: getattr(row, column.key) for column in model.__table__.columns}
        return found


async def add_authorization(db: Database, rows: PendingOrder, domain: str) -> PendingOrder:
    """A second authorization of ``rows``' order (same account, same expiry), its http-01
    challenge ``processing`` too; the returned rows name the same order."""
    async with db.transaction() as session:
        held = (await session.execute(select(Authorization).where(Authorization.id == rows.authz_id))).scalar_one()
        authz = Authorization(account_id=rows.account_id, identifier_type="dns", identifier_value=domain,
                              wildcard=False, expires=held.expires)
        session.add(authz)
        await session.flush()
        session.add(OrderAuthorization(order_id=rows.order_id, authz_id=authz.id, position=1))
        challenge = Challenge(authz_id=authz.id, type="http-01", status="processing", validated=None)
        session.add(challenge)
        await session.flush()
        return PendingOrder(rows.account_id, rows.order_id, authz.id, challenge.id, challenge.token, rows.jwk)
