"""The request context handed to every ACME handler (``AcmeCall``) and the words route rows use."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import josepy
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from acme_ra import telemetry
from acme_ra.db.models import Account
from acme_ra.protocol import jws as jwslib
from acme_ra.protocol.problems import Problem, malformed
from acme_ra_frontend.repo.authentication import SigningAccount
from acme_ra_frontend.repo.reads import Read
from acme_ra_frontend.state import FrontendState
from acme_ra_frontend.urls import Urls

T = TypeVar("T")


class Auth(enum.Enum):
    """Who signs a route's requests."""

    JWK = "jwk"  # newAccount: the key itself
    KID = "kid"  # everything else: an existing account
    EITHER = "either"  # revokeCert: account or certificate key


class Atomicity(enum.Enum):
    """Whether a handler needs the request's one transaction."""

    TRANSACTION = "transaction"
    # Only reads when the request is POST-as-GET (an order, an authorization, a certificate).
    NONE_FOR_POST_AS_GET = "none for POST-as-GET"
    # Every write it makes is one conditional or idempotent statement, atomic by itself (the
    # challenge POST claims the challenge with one UPDATE; newOrder inserts the order with its
    # authorizations in one statement and finalize claims the order with one, each after its rate
    # counters: see ratelimits).
    NONE = "none"


@dataclass
class AcmeCall:
    """One verified ACME request, handed to a route handler.

    ``conn`` is the request's one transaction (SQLAlchemy Core, the hot paths), or a connection
    without one (``Atomicity``); ``session`` is an ORM session on that same connection, created
    when a handler first needs it.
    """

    request: Request
    state: FrontendState
    urls: Urls
    conn: AsyncConnection
    jws: jwslib.ParsedJws
    jwk: josepy.JWK
    account: SigningAccount | None
    jobs: list[tuple[str, BaseModel, str, str | None]] = field(default_factory=list)
    deferred: Callable[[], Awaitable[Response]] | None = None
    orm: AsyncSession | None = None
    # Run once the request is over, answered or failed (e.g. forget a registered wait).
    on_done: list[Callable[[], None]] = field(default_factory=list)
    # The route's resource rows, read in the statement that authenticated the request.
    prefetched: tuple[Read, list[Any]] | None = None
    # What holds ``conn`` when the handler runs without a transaction (``without_connection``).
    held: contextlib.AsyncExitStack | None = None

    async def read(self, read: Read, key: str) -> list[Any]:
        """The rows of ``read`` for ``key``: those read with the authentication, else read now."""
        prefetched = self.prefetched
        if prefetched is not None and prefetched[0] is read and self.request.path_params.get(read.param) == key:
            rows = prefetched[1]
            self.prefetched = None
            return rows
        return await read.rows(self.conn, key)

    @property
    def session(self) -> AsyncSession:
        if self.orm is None:
            self.orm = AsyncSession(bind=self.conn, expire_on_commit=False, autoflush=True)
        return self.orm

    @property
    def is_post_as_get(self) -> bool:
        return self.jws.payload == b""

    def payload(self) -> dict[str, Any]:
        if self.is_post_as_get:
            raise malformed("this resource needs a JSON payload, not POST-as-GET")
        return jwslib.payload_json(self.jws)

    async def without_connection(self, wait: Callable[[], Awaitable[T]]) -> T:
        """Await ``wait()`` (another service's answer on the bus) with the request's database
        connection given back, and take a fresh one after it: a slow or missing answer must not hold
        a pool connection (20 such waits emptied the pool). Handlers without a transaction only
        (Atomicity.NONE): each statement before it is committed already, and what the handler
        writes after it must hold by itself (a conditional statement)."""
        if self.held is None:
            raise RuntimeError("without_connection needs a handler without a transaction (Atomicity.NONE)")
        if self.orm is not None:
            await self.orm.close()
            self.orm = None
        await self.held.aclose()  # the connection goes back (SQLite: its transaction commits)
        answer = await wait()
        self.conn = await self.held.enter_async_context(self.state.db.autocommit())
        return answer

    def publish_after_commit(self, subject: str, job: BaseModel, msg_id: str) -> None:
        """Queue a job; it carries the current span's trace context (the order's trace)."""
        self.jobs.append((subject, job, msg_id, telemetry.current_traceparent()))

    def respond_after_commit(self, answer: Callable[[], Awaitable[Response]]) -> None:
        """Produce the response after the transaction commits (e.g. to wait on another service)."""
        self.deferred = answer

    def respond_when_done(self, key: str, found: Any, reread: Callable[[AsyncConnection], Awaitable[Any]],
                          render: Callable[[Any], Response]) -> None:
        """Answer once the validation or issuance of ``found`` (a challenge or order row, ``key``
        its id) is done, for at most ACME_RA_ANSWER_WAIT_SECONDS (waiting.py): ``render`` gets the
        row with the outcome the event carries (``bus.Event.outcome``), or the row read again by
        ``reread`` when the event carries none (an older publisher), or ``found`` as it stands
        when the wait ran out."""
        wait = self.state.settings.answer_wait_seconds
        if wait <= 0:
            return
        events = self.state.work_events
        done = events.expect(key)  # before the commit: an event right after it is not missed
        self.on_done.append(lambda: events.forget(key, done))

        async def respond() -> Response:
            event = await events.wait(key, done, wait)
            outcome = None if event is None else event.outcome()
            if outcome is not None:
                return render(dataclasses.replace(found, **outcome))
            if event is None:
                return render(found)
            async with self.state.db.autocommit() as conn:  # reads only: no BEGIN/ROLLBACK on PostgreSQL
                return render(await reread(conn) or found)

        self.respond_after_commit(respond)

    def require_account(self) -> SigningAccount:
        assert self.account is not None
        return self.account

    async def orm_account(self) -> Account:
        """The signing account as an ORM object, for handlers that change it."""
        account = await self.session.get(Account, self.require_account().id)
        assert account is not None
        return account


Handler = Callable[[AcmeCall], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def resolve_provisioner(request: Request) -> tuple[FrontendState, Urls]:
    state: FrontendState = request.app.state.ra
    urls = state.urls_for(request.path_params.get("provisioner", ""))
    if urls is None:
        raise Problem("malformed", "no such provisioner", 404)
    return state, urls
