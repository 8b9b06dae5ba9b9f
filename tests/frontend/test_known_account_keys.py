"""POST-as-GET reads by an account whose key the process verified before (verification._verify_outside_transaction).

On PostgreSQL such a read redeems its nonce and reads the account in one statement, on condition
that the key is still the account's. These tests hold on either back end; on PostgreSQL they drive
the one-statement path (the first read of each test puts the key in the process's cache).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import josepy
from sqlalchemy import event, update

from acme_ra.db import fast
from acme_ra.db.models import Account
from acme_ra.protocol.jws import thumbprint
from tests.conformance.client import TestAcmeClient, b64, make_csr, new_key
from tests.frontend.test_checklist import problem, raw_post, ready_order
from tests.frontend.test_policy_profiles_ari import issued_order


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


@dataclass
class Sent:
    statements: int = 0  # SQL statements, on either back end
    begins: int = 0  # transactions begun (BEGIN)


@contextlib.contextmanager
def statements_counted(http: httpx.AsyncClient) -> Iterator[Sent]:
    """What the block sent to the database."""
    sent = Sent()

    def statement(*_args: object) -> None:
        sent.statements += 1

    def begin(*_args: object) -> None:
        sent.begins += 1

    engine = http.app.state.ra.db.engine.sync_engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "begin", begin)
    fast.observers.append(statement)
    try:
        yield sent
    finally:
        fast.observers.remove(statement)
        event.remove(engine, "begin", begin)
        event.remove(engine, "before_cursor_execute", statement)


async def new_order(account: TestAcmeClient, name: str) -> Any:
    return await account.post(account.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})


def dialect(http: httpx.AsyncClient) -> str:
    return str(http.app.state.ra.db.engine.dialect.name)  # type: ignore[attr-defined]


async def test_a_known_accounts_resource_is_read_with_its_nonce_in_one_statement(
    account: TestAcmeClient, http: httpx.AsyncClient
) -> None:
    """On PostgreSQL the account, the redemption and the resource (authorization with its
    challenges, order with its authorization ids, certificate) come back in one statement; on
    either back end the answers are the same and the nonce is spent."""
    order = await account.post(account.directory["newOrder"], {"identifiers": [
        {"type": "dns", "value": "b.example.org"}, {"type": "dns", "value": "a.example.org"}]})
    assert order.status == 201 and order.location
    authz_urls = order.body["authorizations"]
    assert (await account.post(authz_urls[0])).status == 200  # the key is now known to the process
    _, pem = await issued_order(account, http, "cert.example.org")
    one_statement = dialect(http) == "postgresql"
    for url in (*authz_urls, order.location):
        nonce = await account.nonce()
        with statements_counted(http) as sent:
            reply = await raw_post(account, url, account.sign(url, "", nonce))
        assert reply.status_code == 200, reply.text
        if one_statement:
            assert sent.statements == 1
        assert problem(await raw_post(account, url, account.sign(url, "", nonce))) == "badNonce"
    assert (await account.post(order.location)).body["authorizations"] == authz_urls  # in the order's order
    authz = (await account.post(authz_urls[1])).body
    assert authz["identifier"]["value"] == "a.example.org"
    assert [c["type"] for c in authz["challenges"]] == sorted(c["type"] for c in authz["challenges"])

    orders = (await account.post(account.kid + "/orders")).body["orders"]  # type: ignore[operator]
    issued = next(o for o in [(await account.post(url)).body for url in orders] if o["status"] == "valid")
    with statements_counted(http) as sent:
        certificate = await account.post(issued["certificate"])
    assert certificate.status == 200 and certificate.text == pem
    if one_statement:
        assert sent.statements == 1


async def test_a_known_account_reading_a_missing_or_foreign_resource_is_refused(
    account: TestAcmeClient, http: httpx.AsyncClient
) -> None:
    order = await new_order(account, "x.example.org")
    assert order.location
    assert (await account.post(order.location)).status == 200  # the key is now known
    missing = order.location.rsplit("/", 1)[0] + "/no-such-order"
    response = await raw_post(account, missing, account.sign(missing, "", await account.nonce()))
    assert response.status_code == 404 and problem(response) == "malformed"

    other = TestAcmeClient(http, account.directory_url)
    await other.load_directory()
    assert (await other.register()).status == 201
    other_order = await new_order(other, "y.example.org")
    assert (await other.post(other_order.body["authorizations"][0])).status == 200  # known to the process too
    for url in (order.location, order.body["authorizations"][0]):
        assert problem(await raw_post(other, url, other.sign(url, "", await other.nonce()))) == "unauthorized"


async def test_a_known_accounts_challenge_post_claims_without_a_transaction(
    account: TestAcmeClient, http: httpx.AsyncClient
) -> None:
    """The challenge POST: the account, the redemption and the authorization in one statement on
    PostgreSQL, then the claim; no BEGIN/COMMIT."""
    order = await new_order(account, "c.example.org")
    authz = (await account.post(order.body["authorizations"][0])).body
    url = next(c["url"] for c in authz["challenges"] if c["type"] == "http-01")
    with statements_counted(http) as sent:
        reply = await account.post(url, {})
    assert reply.status == 200 and reply.body["status"] == "processing", reply.text
    if dialect(http) == "postgresql":  # (SQLite's autocommit is a transaction of its own)
        assert sent.begins == 0 and sent.statements == 2
    again = await account.post(url, {})
    assert again.status == 200 and again.body["status"] == "processing"


async def test_finalize_reads_its_order_with_the_account(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    """Finalize, without a transaction: the account, the redemption and the order in one statement
    on PostgreSQL, then the rate counter with the claim (which also refuses a blocked key) in one."""
    order = await ready_order(account, http, ["fin.example.org"])
    csr, _ = make_csr(["fin.example.org"])
    with statements_counted(http) as sent:
        finalized = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    assert finalized.status == 200 and finalized.body["status"] == "processing", finalized.text
    settings = http.app.state.ra.settings  # type: ignore[attr-defined]
    assert settings.rate_certificates_per_domain_per_week > 0  # the counter is part of the claim's statement
    if dialect(http) == "postgresql":
        assert sent.begins == 0 and sent.statements == 2
    again = await account.post(str(order["finalize"]), {"csr": b64(csr)})
    assert again.status == 403 and again.problem_type == "orderNotReady", again.text


async def test_new_order_spends_its_counters_in_its_insert(client: TestAcmeClient, http: httpx.AsyncClient) -> None:
    """An account bound to an EAB key has two newOrder limits (its own and the key's): on
    PostgreSQL both counters are spent by the statement that inserts the order, so newOrder sends
    no more statements with them than without; elsewhere each is a statement of its own."""
    from tests.frontend.test_eab import binding, new_eab_key

    key = await new_eab_key(http)
    assert (await client.register(externalAccountBinding=binding(client, key.kid, key.hmac_key))).status == 201
    state = http.app.state.ra  # type: ignore[attr-defined]
    saved = state.settings
    assert (await new_order(client, "counted-warm-up.example.org")).status == 201  # the key now known
    counted: dict[bool, int] = {}
    try:
        for limited in (False, True):
            per_hour = 1000 if limited else 0
            state.settings = saved.model_copy(update={"rate_new_orders_per_account_per_hour": per_hour,
                                                      "rate_new_orders_per_eab_key_per_hour": per_hour})
            with statements_counted(http) as sent:
                assert (await new_order(client, f"counted-{limited}.example.org")).status == 201
            counted[limited] = sent.statements
    finally:
        state.settings = saved
    assert counted[True] == counted[False] + (0 if dialect(http) == "postgresql" else 2)
