"""ACME plumbing shared by every route, written once (Boulder wfe2 HandleFunc + verify.go):

- ``AcmeHeaders``: pure ASGI middleware adding ``Replay-Nonce``, ``Link rel="index"``, CORS and
  ``Cache-Control`` to every response, errors included.
- ``acme_post``: the one entry point of every POST route: content type, body cap, JWS checks, key
  or account lookup, signature, nonce redemption, one transaction, jobs published after commit.
- Problem rendering (``application/problem+json``) for every error, never a stack trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import josepy
import orjson
from fastapi import Request
from fastapi.responses import Response
from josepy.jwk import JWK
from pydantic import BaseModel
from sqlalchemy import String, Text, bindparam, cast, exists, func, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from acme_ra import telemetry
from acme_ra.db.fast import Statement
from acme_ra.db.models import Account, AccountStatus, Certificate, Order, OrderAuthorization, RedeemedNonce
from acme_ra.protocol import jws as jwslib
from acme_ra.protocol.problems import Problem, bad_nonce, malformed, method_not_allowed, server_internal, unauthorized
from acme_ra_frontend import metrics
from acme_ra_frontend.queries import Read
from acme_ra_frontend.state import FrontendState
from acme_ra_frontend.urls import Urls

log = logging.getLogger("acme_ra.frontend")

JOSE_CONTENT_TYPE = "application/jose+json"
PROBLEM_CONTENT_TYPE = "application/problem+json"
_EXPOSED = "Link, Replay-Nonce, Location, Retry-After"
T = TypeVar("T")


# Headers of every newNonce answer but the nonce and the index link (RFC 8555 §7.2).
_NONCE_HEAD_HEADERS = ((b"cache-control", b"no-store"), (b"content-length", b"0"))
_NONCE_GET_HEADERS = ((b"cache-control", b"no-store"),)
_CORS_HEADERS = ((b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", _EXPOSED.encode()))
_EMPTY_BODY: Message = {"type": "http.response.body", "body": b"", "more_body": False}


def new_nonce_links(state: FrontendState) -> dict[str, tuple[bytes, bytes]]:
    """newNonce's path per provisioner → its ``Link rel="index"`` header (name, value), encoded once."""
    return {
        f"/acme/{name}/new-nonce": (b"link", f'<{urls.directory}>;rel="index"'.encode())
        for name, urls in state.urls.items()
    }


class AcmeHeaders:
    """Adds the headers every ACME response carries, and answers HEAD/GET newNonce itself.

    newNonce is the one request a client may send at any rate, without a signature: it is answered
    here, before routing, with headers encoded once, a counter and no log line; the answer is the
    one the route in directory.py would give (HEAD 200, GET 204, ``Cache-Control: no-store``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/acme/"):
            await self.app(scope, receive, send)
            return
        state: FrontendState | None = getattr(scope["app"].state, "ra", None)
        method = scope["method"]
        if state is not None and (method == "HEAD" or method == "GET"):
            link = state.new_nonce_links.get(scope["path"])
            if link is not None:
                await answer_new_nonce(state, method, link, send)
                return
        path: str = scope["path"]
        parts = path.split("/", 3)
        index = None
        if (len(parts) >= 3 and parts[1] == "acme" and state and state.urls_for(parts[2])
                and not path.endswith("/directory")):
            index = state.urls[parts[2]].directory
        started = time.perf_counter()
        direct = _direct_route(scope) if method == "POST" else None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if state is not None and b"replay-nonce" not in names:
                    headers.append((b"replay-nonce", state.nonces.issue().encode()))
                if index:
                    headers.append((b"link", f'<{index}>;rel="index"'.encode()))
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                headers.append((b"access-control-allow-origin", b"*"))
                headers.append((b"access-control-expose-headers", _EXPOSED.encode()))
                message["headers"] = headers
                elapsed = time.perf_counter() - started
                template = getattr(scope.get("route"), "path", "unmatched")
                metrics.HTTP_REQUESTS.labels(template, scope["method"], message["status"]).inc()
                metrics.HTTP_SECONDS.labels(template, scope["method"]).observe(elapsed)
                log.info(
                    "request",
                    extra={"method": scope["method"], "path": path, "status": message["status"],
                           "ms": round(elapsed * 1000, 1)},
                )
            await send(message)

        if direct is not None:
            response = await direct(Request(scope, receive))
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def direct_routes(routes: list[Any], endpoints: set[Callable[[Request], Awaitable[Response]]]) -> list[Any]:
    """The POST routes whose endpoint is one of ``endpoints`` (each turns every error into a
    problem response itself): ``AcmeHeaders`` matches them and calls the endpoint with the
    request, without the router and FastAPI's request plumbing (exception middleware, dependency
    resolution, its route telemetry), which cost more than a POST-as-GET's own work. Other requests,
    and any path these do not match, take the app's router as before."""
    return [route for route in routes
            if getattr(route, "endpoint", None) in endpoints and "POST" in (getattr(route, "methods", None) or ())]


def _direct_route(scope: Scope) -> Callable[[Request], Awaitable[Response]] | None:
    """The endpoint of the direct route ``scope`` matches (its path parameters, route and endpoint
    set in ``scope`` as the router would), else None."""
    path = scope["path"]
    for route in getattr(scope["app"].state, "direct_routes", None) or ():
        match = route.path_regex.match(path)
        if match is not None:
            convertors = route.param_convertors
            scope["path_params"] = {name: convertors[name].convert(value) for name, value in match.groupdict().items()}
            scope["route"] = route
            scope["endpoint"] = route.endpoint
            return route.endpoint  # type: ignore[no-any-return]
    return None


async def answer_new_nonce(state: FrontendState, method: str, link: tuple[bytes, bytes], send: Send) -> None:
    head = method == "HEAD"
    headers = [*(_NONCE_HEAD_HEADERS if head else _NONCE_GET_HEADERS),
               (b"replay-nonce", state.nonces.issue().encode()), link, *_CORS_HEADERS]
    (metrics.NEW_NONCE_HEAD if head else metrics.NEW_NONCE_GET).inc()
    await send({"type": "http.response.start", "status": 200 if head else 204, "headers": headers})
    await send(_EMPTY_BODY)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, content_type: str = "application/json"
) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=content_type)


def problem_response(problem: Problem) -> Response:
    metrics.PROBLEMS.labels(problem.type).inc()
    return json_response(problem.to_dict(), problem.status, problem.headers, PROBLEM_CONTENT_TYPE)


async def handle_problem(_request: Request, problem: Exception) -> Response:
    assert isinstance(problem, Problem)
    return problem_response(problem)


async def handle_unexpected(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem_response(server_internal())


async def handle_http_error(_request: Request, error: Exception) -> Response:
    status = getattr(error, "status_code", 500)
    if status == 405:
        allowed = (getattr(error, "headers", None) or {}).get("Allow", "POST")
        return problem_response(method_not_allowed([m.strip() for m in allowed.split(",")]))
    if status == 404:
        return problem_response(Problem("malformed", "no such resource", 404))
    if status >= 500:
        return problem_response(server_internal())
    return problem_response(Problem("malformed", str(getattr(error, "detail", "bad request")), status))


class Auth(enum.Enum):
    JWK = "jwk"  # newAccount: the key itself
    KID = "kid"  # everything else: an existing account
    EITHER = "either"  # revokeCert: account or certificate key


@dataclass(slots=True)
class SigningAccount:
    """The account that signed the request, read with the nonce redemption in one statement
    (not an ORM object: handlers that change the account load it with ``AcmeCall.orm_account``)."""

    id: str
    status: str
    key_thumbprint: str
    jwk_text: str
    tos_agreed: bool
    tos_agreed_url: str | None
    eab_kid: str | None


@dataclass
class AcmeCall:
    """One verified ACME request, handed to a route handler.

    ``conn`` is the request's one transaction (SQLAlchemy Core, the hot paths); ``session`` is an
    ORM session in that same transaction, created when a handler first needs it.
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


def resolve_provisioner(request: Request) -> tuple[FrontendState, Urls]:
    state: FrontendState = request.app.state.ra
    urls = state.urls_for(request.path_params.get("provisioner", ""))
    if urls is None:
        raise Problem("malformed", "no such provisioner", 404)
    return state, urls


async def read_body(request: Request) -> bytes:
    """The JWS body; its size is already bounded (http_limits.BodyLimit, ACME_RA_HTTP_MAX_BODY_BYTES)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JOSE_CONTENT_TYPE:
        raise Problem("malformed", f"Content-Type must be {JOSE_CONTENT_TYPE}", 415)
    return await request.body()


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


async def acme_post(request: Request, handler: Handler, auth: Auth,
                    atomicity: Atomicity = Atomicity.TRANSACTION, read: Read | None = None) -> Response:
    """Verify the JWS, run the handler in one transaction, then publish its jobs.

    A handler that needs no transaction (``atomicity``) runs on ``Database.autocommit``
    (PostgreSQL: no BEGIN/COMMIT, each statement its own transaction): the account read, the
    signature check, the nonce redemption, the resource read; the few writes these handlers make
    (expiring an order or authorization, claiming a challenge) are single statements. Two round
    trips fewer. With no transaction to roll back, a request refused after its signature was
    checked keeps its nonce spent, as any refused request does at Boulder and Pebble.

    ``read``: the route's resource read; outside a transaction it may be run in the statement
    that authenticates the request (``authenticate_outside_transaction``)."""
    state, urls = resolve_provisioner(request)
    body = await read_body(request)
    parsed = jwslib.parse_jws(body)
    expected_url = state.settings.external_url + request.url.path
    if request.url.query:
        expected_url += "?" + request.url.query
    if parsed.url != expected_url:
        raise unauthorized(f"JWS url {parsed.url!r} does not match the request URL {expected_url!r}")
    if auth is Auth.JWK and parsed.jwk is None:
        raise malformed("this request must be signed with a jwk, not a kid")
    if auth is Auth.KID and parsed.kid is None:
        raise malformed("this request must be signed with the account's kid, not a jwk")

    try:
        nonce_expires, nonce_problem = state.nonces.check(parsed.nonce), None
    except Problem as problem:  # raised after the account and signature checks, as before
        nonce_expires, nonce_problem = None, problem
    call: AcmeCall | None = None
    try:
        prefetched = None
        no_transaction = atomicity is Atomicity.NONE or (
            atomicity is Atomicity.NONE_FOR_POST_AS_GET and parsed.payload == b"")
        async with contextlib.AsyncExitStack() as held:  # a handler may give the connection back meanwhile
            conn = await held.enter_async_context(state.db.autocommit() if no_transaction else state.db.engine.begin())
            account = None
            if parsed.kid is None:
                assert parsed.jwk is not None
                key = parsed.jwk
                fresh = await redeem_nonce(conn, parsed.nonce, nonce_expires)
                jwslib.verify_signature(parsed, key)  # a forged request rolls the redemption back (N6)
            elif no_transaction:
                account, key, fresh, prefetched = await authenticate_outside_transaction(
                    conn, urls, parsed, nonce_expires, read, request.path_params)
            else:
                account, fresh, prefetched = await load_account_and_redeem(
                    conn, urls, parsed.kid, parsed.nonce, nonce_expires, read, request.path_params)
                key = parse_account_key(account.jwk_text)
                jwslib.verify_signature(parsed, key)
                remember_account_key(account)
            if nonce_problem is not None:
                raise nonce_problem
            if not fresh:
                raise bad_nonce("nonce has already been used")
            call = AcmeCall(request, state, urls, conn, parsed, key, account, held=held if no_transaction else None)
            if prefetched is not None:
                call.prefetched = (read, prefetched)  # type: ignore[assignment]
            try:
                if telemetry.tracing_enabled():
                    traceparent = await order_traceparent(conn, request.path_params)
                    new_trace = handler.__name__ == "new_order"
                    with telemetry.span(f"acme.{handler.__name__}", traceparent, new_trace,
                                        **{"acme.account_id": account.id if account else None,
                                           "acme.order_id": request.path_params.get("order_id")}):
                        response = await handler(call)
                else:
                    response = await handler(call)
                if call.orm is not None:
                    await call.orm.flush()
            finally:
                if call.orm is not None:
                    await call.orm.close()
        for subject, job, msg_id, traceparent in call.jobs:
            await state.outbox.publish(subject, job, msg_id, traceparent)
        if call.deferred is not None:
            return await call.deferred()
        return response
    finally:
        if call is not None:
            for done in call.on_done:
                done()


async def order_traceparent(conn: AsyncConnection, params: dict[str, Any]) -> str | None:
    """The trace context of the order a request is about (tracing only: one indexed lookup)."""
    if "order_id" in params:
        query = select(Order.trace_context).where(Order.id == params["order_id"])
    elif "authz_id" in params:
        query = (
            select(Order.trace_context)
            .join(OrderAuthorization, OrderAuthorization.order_id == Order.id)
            .where(OrderAuthorization.authz_id == params["authz_id"])
            .order_by(Order.created_at.desc())
            .limit(1)
        )
    elif "certificate_id" in params:
        query = (
            select(Order.trace_context)
            .join(Certificate, Certificate.order_id == Order.id)
            .where(Certificate.id == params["certificate_id"])
        )
    else:
        return None
    return (await conn.execute(query)).scalars().first()


# The signing account's columns; the JWK as its stored JSON text (the key of the parsed-JWK cache).
_ACCOUNT_COLUMNS = (
    Account.id, Account.status, Account.key_thumbprint, cast(Account.jwk, Text).label("jwk_text"),
    Account.tos_agreed, Account.tos_agreed_url, Account.eab_kid,
)
_NONCE_VALUES: dict[str, Any] = {"nonce": bindparam("nonce"), "expires_at": bindparam("expires")}
# Redeeming a nonce: a second use inserts nothing (the primary key), whichever request commits first.
_REDEEM = {
    dialect: Statement(
        insert(RedeemedNonce).values(_NONCE_VALUES).on_conflict_do_nothing().returning(RedeemedNonce.nonce))
    for dialect, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_ACCOUNT = Statement(select(*_ACCOUNT_COLUMNS).where(Account.id == bindparam("account_id")))
# PostgreSQL: the account and the redemption in one statement, one round trip (a data-modifying
# CTE always runs to completion, read or not).
_redeemed = _REDEEM["postgresql"].statement.cte("redeemed")
_ACCOUNT_AND_REDEEM = Statement(select(
    select(func.count()).select_from(_redeemed).scalar_subquery().label("fresh"), *_ACCOUNT_COLUMNS
).where(Account.id == bindparam("account_id")))

# PostgreSQL, a POST-as-GET read by an account whose key this process has verified before: the
# nonce is redeemed only if that key is still the account's, and the account read, in one statement.
_key_still_current = exists().where(Account.id == bindparam("account_id"),
                                    cast(Account.jwk, Text) == bindparam("jwk_text"))
_redeemed_if_key = (
    pg_insert(RedeemedNonce)
    .from_select(["nonce", "expires_at"],
                 select(bindparam("nonce", type_=String), bindparam("expires", type_=RedeemedNonce.expires_at.type))
                 .where(_key_still_current))
    .on_conflict_do_nothing()
    .returning(RedeemedNonce.nonce)
    .cte("redeemed_if_key")
)
_ACCOUNT_AND_REDEEM_IF_KEY = Statement(select(
    select(func.count()).select_from(_redeemed_if_key).scalar_subquery().label("fresh"), *_ACCOUNT_COLUMNS
).where(Account.id == bindparam("account_id")))

# PostgreSQL, either of the two with the route's resource read (queries.Read) in the same
# statement: one round trip for a whole POST-as-GET. The resource is outer-joined: the account's
# row comes back whether or not the resource exists (its columns are then NULL).
_AUTHENTICATED_READS: dict[tuple[Read, bool], Statement] = {}


def _authenticated_read(read: Read, if_key: bool) -> Statement:
    """``_ACCOUNT_AND_REDEEM_IF_KEY`` (``if_key``) or ``_ACCOUNT_AND_REDEEM``, with ``read``."""
    statement = _AUTHENTICATED_READS.get((read, if_key))
    if statement is None:
        redeemed = _redeemed_if_key if if_key else _redeemed
        resource = read.statement.statement.subquery("resource")
        statement = _AUTHENTICATED_READS[read, if_key] = Statement(
            select(select(func.count()).select_from(redeemed).scalar_subquery().label("fresh"),
                   *_ACCOUNT_COLUMNS, *resource.c)
            .select_from(Account).outerjoin(resource, true())
            .where(Account.id == bindparam("account_id")))
    return statement


async def _authenticate(conn: AsyncConnection, alone: Statement, if_key: bool, params: dict[str, Any],
                       read: Read | None, path_params: dict[str, Any] | None) -> tuple[Any, list[Any] | None]:
    """Run ``alone`` (the account with its redemption), or the same with ``read`` when the path
    names its resource: the account's row (None: no such account) and the resource's rows."""
    key = path_params.get(read.param) if read is not None and path_params else None
    if key is None:
        return (await alone.run(conn, params)).first(), None
    assert read is not None
    rows = (await _authenticated_read(read, if_key).run(conn, {**params, read.param: key})).all()
    return (rows[0] if rows else None), [row[_RESOURCE_COLUMN:] for row in rows if row[_RESOURCE_COLUMN] is not None]


# Where the resource's columns start in a row of an authenticated read.
_RESOURCE_COLUMN = 1 + len(_ACCOUNT_COLUMNS)

# Parsed account keys by their JSON text: a key never changes under the same text, so a cached key
# is never stale (key rollover stores another text; status is read on every request).
JWK_CACHE_SIZE = 10_000
_jwk_cache: dict[str, JWK] = {}
# The key text each account's requests were last verified with in this process, by account id. Only
# a hint: the statement that redeems the nonce checks it is still the account's (key rollover on
# another replica), so a stale entry costs one more round trip, never a wrong answer.
_verified_keys: dict[str, str] = {}


def remember_account_key(account: SigningAccount) -> None:
    if len(_verified_keys) >= JWK_CACHE_SIZE:
        _verified_keys.clear()
    _verified_keys[account.id] = account.jwk_text


def parse_account_key(jwk_text: str) -> JWK:
    cached = _jwk_cache.get(jwk_text)
    if cached is not None:
        return cached
    if len(_jwk_cache) >= JWK_CACHE_SIZE:
        _jwk_cache.clear()
    key = JWK.from_json(orjson.loads(jwk_text))
    assert isinstance(key, JWK)
    _jwk_cache[jwk_text] = key
    return key


async def redeem_nonce(conn: AsyncConnection, nonce: str, expires: dt.datetime | None) -> bool:
    """Record the nonce as used in the request's transaction; False if it was used before.
    ``expires`` None: the nonce is not ours or has expired (nothing recorded)."""
    if expires is None:
        return False
    result = await _REDEEM[conn.dialect.name].run(conn, {"nonce": nonce, "expires": expires})
    return result.first() is not None


async def authenticate_outside_transaction(
    conn: AsyncConnection, urls: Urls, parsed: jwslib.ParsedJws, expires: dt.datetime | None,
    read: Read | None = None, path_params: dict[str, Any] | None = None,
) -> tuple[SigningAccount, JWK, bool, list[Any] | None]:
    """A request outside any transaction: no redemption to roll back, so the signature is
    checked before the nonce is redeemed and a forged request does not burn it (N6). Whether the
    nonce was fresh comes third; fourth, the rows of ``read`` when they were read here (else None).

    The account, the check and the redemption take two statements; one on PostgreSQL when this
    process has verified the account's key before: the signature is checked with that key, then one
    statement redeems the nonce on condition that the key is still the account's, and reads the
    account, and the route's resource with it (``read``, keyed by its path parameter)."""
    assert parsed.kid is not None
    account_id = urls.account_id_from_kid(parsed.kid)
    known = _verified_keys.get(account_id) if account_id else None
    if known is not None and expires is not None and conn.dialect.name == "postgresql":
        key = parse_account_key(known)
        try:
            jwslib.verify_signature(parsed, key)
        except Problem:
            pass  # perhaps signed with a newer key: checked below against the stored one
        else:
            params = {"account_id": account_id, "nonce": parsed.nonce, "expires": expires, "jwk_text": known}
            row, resource = await _authenticate(conn, _ACCOUNT_AND_REDEEM_IF_KEY, True, params, read, path_params)
            if row is None or row.jwk_text == known:
                return signing_account(row), key, row.fresh > 0, resource
        _verified_keys.pop(account_id, None)  # type: ignore[arg-type]
    account = await load_account(conn, urls, parsed.kid)
    key = parse_account_key(account.jwk_text)
    jwslib.verify_signature(parsed, key)
    remember_account_key(account)
    return account, key, await redeem_nonce(conn, parsed.nonce, expires), None


def signing_account(row: Any) -> SigningAccount:
    """The account read for a request, refused unless it exists and is valid."""
    if row is None:
        raise Problem("accountDoesNotExist", "no account exists with the key id given in the JWS")
    account = SigningAccount(row.id, row.status, row.key_thumbprint, row.jwk_text, row.tos_agreed,
                             row.tos_agreed_url, row.eab_kid)
    if account.status != AccountStatus.valid.value:
        raise unauthorized(f"account is {account.status}", 401)
    return account


async def load_account(conn: AsyncConnection, urls: Urls, kid: str) -> SigningAccount:
    """The signing account alone (the nonce is redeemed by the caller, after the signature)."""
    account_id = urls.account_id_from_kid(kid)
    row = None if account_id is None else (await _ACCOUNT.run(conn, {"account_id": account_id})).first()
    return signing_account(row)


async def load_account_and_redeem(
    conn: AsyncConnection, urls: Urls, kid: str, nonce: str, expires: dt.datetime | None,
    read: Read | None = None, path_params: dict[str, Any] | None = None,
) -> tuple[SigningAccount, bool, list[Any] | None]:
    """The signing account (refused unless valid) and whether the nonce was fresh, redeemed in the
    same transaction: one statement on PostgreSQL, which reads the route's resource too (``read``;
    its rows third, else None)."""
    account_id = urls.account_id_from_kid(kid)
    if account_id is None or expires is None or conn.dialect.name != "postgresql":
        account = await load_account(conn, urls, kid)
        return account, await redeem_nonce(conn, nonce, expires), None
    params = {"account_id": account_id, "nonce": nonce, "expires": expires}
    row, resource = await _authenticate(conn, _ACCOUNT_AND_REDEEM, False, params, read, path_params)
    return signing_account(row), row is not None and row.fresh > 0, resource
