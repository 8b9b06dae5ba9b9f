"""Two authorizations of one order validated at the same moment: the order still becomes ready.

On PostgreSQL each validator's outcome statement sees the other's authorization still pending
(not committed yet), so neither makes the order ready; the validator therefore looks at the
order again after its commit (``ChallengeValidator.settle_again``). SQLite serializes writers
(BEGIN IMMEDIATE), so the race needs PostgreSQL (ACME_RA_TEST_DATABASE_URL, CI's second lane).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from collections.abc import AsyncIterator

import pytest

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra.db.lifecycle import record_challenge_outcome
from acme_ra.db.migrate import upgrade
from acme_ra_validator.http01 import new_http_client
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.worker import ChallengeValidator
from tests.support import database

from .conftest import HttpLab
from .rows import add_authorization, insert_pending_order, snapshot
from .test_validator_worker import PATH, FakeMsg, lab_options

pytestmark = pytest.mark.skipif(database.backend() != "postgresql",
                                reason="the race needs PostgreSQL's concurrent writers (ACME_RA_TEST_DATABASE_URL)")
LIFETIME = dt.timedelta(days=30)


@pytest.fixture
async def pg(fresh_database_url: str) -> AsyncIterator[Database]:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # migrations run their own event loop
        pool.submit(upgrade, fresh_database_url).result()
    db = Database(fresh_database_url)
    yield db
    await db.dispose()


async def test_two_authorizations_valid_at_once_make_the_order_ready(
    pg: Database, http_lab: HttpLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await insert_pending_order(pg, "one.localhost")
    # A second authorization of the same order, its challenge processing too.
    other = await add_authorization(pg, first, "two.localhost")

    # Another validator's outcome for the second authorization: written, not yet committed.
    concurrent_conn = await pg.engine.connect()
    transaction = await concurrent_conn.begin()
    assert await record_challenge_outcome(concurrent_conn, other.challenge_id, None, LIFETIME)

    async with new_http_client() as http:
        validator = ChallengeValidator(pg, http, NameResolver([]), lab_options(http_lab.port), authz_lifetime=LIFETIME)
        looked_again = []
        settle_again = validator.settle_again

        async def commit_the_other_first(authz_id: str) -> None:
            # This validator's outcome is committed and saw the other authorization pending;
            # the other validator commits now, before this one looks at the order again.
            assert (await snapshot(pg, first))["order"]["status"] == "pending"
            await transaction.commit()
            await concurrent_conn.close()
            looked_again.append(authz_id)
            await settle_again(authz_id)

        monkeypatch.setattr(validator, "settle_again", commit_the_other_first)
        http_lab.routes[PATH + first.token] = (200, {}, first.key_authorization.encode())
        await validator.handle(bus.ValidateJob(challenge_id=first.challenge_id, order_id=first.order_id),
                               FakeMsg())  # type: ignore[arg-type]

    assert looked_again == [first.authz_id]
    assert (await snapshot(pg, first))["order"]["status"] == "ready"


async def test_only_an_outcome_that_leaves_the_order_pending_looks_again(
    pg: Database, http_lab: HttpLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await insert_pending_order(pg, "one.localhost")
    second = await add_authorization(pg, first, "two.localhost")
    async with new_http_client() as http:
        validator = ChallengeValidator(pg, http, NameResolver([]), lab_options(http_lab.port), authz_lifetime=LIFETIME)
        looked_again = []
        settle_again = validator.settle_again

        async def counted(authz_id: str) -> None:
            looked_again.append(authz_id)
            await settle_again(authz_id)

        monkeypatch.setattr(validator, "settle_again", counted)
        http_lab.routes[PATH + first.token] = (200, {}, first.key_authorization.encode())
        await validator.handle(bus.ValidateJob(challenge_id=first.challenge_id), FakeMsg())  # type: ignore[arg-type]
        assert looked_again == [first.authz_id]  # the second authorization was pending
        assert (await snapshot(pg, first))["order"]["status"] == "pending"

        http_lab.routes[PATH + second.token] = (200, {}, second.key_authorization.encode())
        await validator.handle(bus.ValidateJob(challenge_id=second.challenge_id), FakeMsg())  # type: ignore[arg-type]
        assert looked_again == [first.authz_id]  # the outcome's own statement made the order ready
    assert (await snapshot(pg, first))["order"]["status"] == "ready"
