"""POST-as-GET reads by an account whose key the process verified before (plumbing.authenticate_outside_transaction).

On PostgreSQL such a read redeems its nonce and reads the account in one statement, on condition
that the key is still the account's. These tests hold on either back end; on PostgreSQL they drive
the one-statement path (the first read of each test puts the key in the process's cache).
"""

from __future__ import annotations

import httpx
import josepy
from sqlalchemy import update

from acme_ra.db.models import Account
from acme_ra.protocol.jws import thumbprint
from tests.conformance.client import TestAcmeClient, new_key
from tests.frontend.test_checklist import problem, raw_post


async def read(account: TestAcmeClient, key: josepy.JWK | None = None, nonce: str | None = None) -> httpx.Response:
    assert account.kid
    body = account.sign(account.kid, "", nonce or await account.nonce(), key=key)
    return await raw_post(account, account.kid, body)


async def test_a_forged_read_by_a_known_account_does_not_burn_the_nonce(account: TestAcmeClient) -> None:
    assert (await read(account)).status_code == 200  # the key is now known to the process
    nonce = await account.nonce()
    assert problem(await read(account, key=new_key(), nonce=nonce)) == "malformed"
    assert (await read(account, nonce=nonce)).status_code == 200
    assert problem(await read(account, nonce=nonce)) == "badNonce"


async def test_a_key_changed_by_another_replica_is_noticed(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    """Another replica rolled the key over: this process still knows the old one."""
    assert account.kid
    assert (await read(account)).status_code == 200
    old_key, rolled = account.key, new_key()
    state = http.app.state.ra  # type: ignore[attr-defined]
    async with state.db.transaction() as session:
        await session.execute(
            update(Account).where(Account.id == account.kid.rsplit("/", 1)[1])
            .values(jwk=rolled.public_key().to_partial_json(), key_thumbprint=thumbprint(rolled))
        )
    nonce = await account.nonce()
    assert problem(await read(account, key=old_key, nonce=nonce)) == "malformed"
    account.key = rolled
    assert (await read(account, nonce=nonce)).status_code == 200  # the refused request left it unspent
    assert (await read(account)).status_code == 200
    assert problem(await read(account, key=old_key)) == "malformed"
