"""Checklist Z6: the key authorization uses the account key at validation time, so a key
rollover between the challenge POST and the validation job counts the new key."""

from __future__ import annotations

import base64

import josepy
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra.db.models import Account
from acme_ra.protocol.jws import key_authorization
from acme_ra_validator.worker import ChallengeValidator

from .conftest import HttpLab
from .rows import insert_pending_order, snapshot
from .test_validator_worker import PATH, FakeMsg, db, validator  # noqa: F401 - fixtures


async def test_validation_after_a_rollover_uses_the_new_key(
    db: Database, validator: ChallengeValidator, http_lab: HttpLab  # noqa: F811 - fixtures
) -> None:
    old = await insert_pending_order(db, "rolled.localhost")
    new = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    async with db.transaction() as session:  # keyChange, as the frontend records it
        await session.execute(update(Account).where(Account.id == old.account_id).values(
            jwk=new.public_key().to_json(),
            key_thumbprint=base64.urlsafe_b64encode(new.thumbprint()).rstrip(b"=").decode(),
        ))
    expected = key_authorization(old.token, new.public_key().to_json())
    assert expected != old.key_authorization
    http_lab.routes[PATH + old.token] = (200, {}, expected.encode())
    await validator.handle(bus.ValidateJob(challenge_id=old.challenge_id, order_id=old.order_id), FakeMsg())  # type: ignore[arg-type]
    assert (await snapshot(db, old))["challenge"]["status"] == "valid"


async def test_the_old_key_no_longer_validates(
    db: Database, validator: ChallengeValidator, http_lab: HttpLab  # noqa: F811 - fixtures
) -> None:
    old = await insert_pending_order(db, "stale-key.localhost")
    new = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    async with db.transaction() as session:
        await session.execute(update(Account).where(Account.id == old.account_id).values(
            jwk=new.public_key().to_json(),
            key_thumbprint=base64.urlsafe_b64encode(new.thumbprint()).rstrip(b"=").decode(),
        ))
    http_lab.routes[PATH + old.token] = (200, {}, old.key_authorization.encode())
    await validator.handle(bus.ValidateJob(challenge_id=old.challenge_id, order_id=old.order_id), FakeMsg())  # type: ignore[arg-type]
    after = await snapshot(db, old)
    assert after["challenge"]["status"] == "invalid" and after["challenge"]["error"]["type"] == "unauthorized"
