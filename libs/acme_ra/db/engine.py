"""Engine and session factory: created once per process, one session per request or job.

Beside the ORM session, ``autocommit()``: a Core connection for the hot paths (the frontend's
reads, the workers' jobs), where an ORM session costs more client CPU than the statements it runs,
for a read that needs no transaction or one statement that is its own (no BEGIN and no
COMMIT/ROLLBACK round trips on PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from acme_ra.db import multihost

# SQLite: how long a writer waits for another process's write lock (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL: a pooled connection unused for this long is pinged before use (seconds).
POOL_PING_IDLE_SECONDS = 10.0
# SQLSTATE of a write refused by a server that is (now) a standby: read_only_sql_transaction.
READ_ONLY_SQLSTATE = "25006"
# How long one host of several may take to accept a connection and answer before the next is
# tried (seconds).
HOST_CONNECT_TIMEOUT_SECONDS = 5.0
# A host that fails so is passed over for the next; any other error (a wrong password) is raised.
_NEXT_HOST = (OSError, TimeoutError, asyncpg.exceptions.TargetServerAttributeNotMatched,
              asyncpg.exceptions.CannotConnectNowError)


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _make_sqlite_transactions_immediate(engine)
        return engine
    # No pool_pre_ping: it costs 3 round trips (BEGIN, ping, ROLLBACK) on every checkout, a third
    # of a request's. A connection that died anyway (PostgreSQL restarted) fails its first
    # statement with a disconnect error, which invalidates every pooled connection at once: the
    # frontend answers that request 503 + Retry-After, a worker's job is nak'ed and redelivered.
    # Only a connection idle for POOL_PING_IDLE_SECONDS is pinged (a restart or a network device
    # may have closed it meanwhile); LIFO keeps the busy connections busy and the others idle.
    # Several hosts (libpq's h1:p1,h2:p2): each new connection goes to the one that takes writes,
    # one host at a time with a timeout each (PrimaryConnector), so that a new connection after a
    # failover reaches the new primary.
    several = len(multihost.hosts(url)) > 1
    engine = create_async_engine(
        multihost.sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_use_lifo=True,
        async_creator=PrimaryConnector(url) if several else None,
    )
    _ping_idle_connections(engine)
    _drop_connections_to_a_standby(engine)
    return engine


def is_read_only_refusal(error: BaseException | None) -> bool:
    """A write refused because the server is a standby (SQLSTATE 25006), here or in the chain."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "sqlstate", None) == READ_ONLY_SQLSTATE:
            return True
        error = error.__cause__ or error.__context__
    return False


def _drop_connections_to_a_standby(engine: AsyncEngine) -> None:
    """A server demoted under open connections (a switchover whose old primary came back as a
    standby without dropping them, a proxy that kept them) refuses every write: the error counts
    as a disconnect, so that the pool drops every connection as old as this one and the next
    ones go to the primary; the request is answered 503 and retried, the job redelivered."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: Any) -> None:
        if is_read_only_refusal(context.original_exception):
            context.is_disconnect = True


def _ping_idle_connections(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < POOL_PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # the pool reconnects, and drops the connections as old as this one
            raise exc.InvalidatePoolError(f"idle connection failed its ping: {type(error).__name__}") from error


def _make_sqlite_transactions_immediate(engine: AsyncEngine) -> None:
    """Several processes share one SQLite file: WAL, and BEGIN IMMEDIATE so that a read that
    turns into a write never fails with 'database is locked' (it waits for the lock instead)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching to WAL takes a lock that another process starting at
        # the same moment may hold ("database is locked" at start-up otherwise).
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _driver_closed(conn: AsyncConnection) -> bool:
    """Whether the asyncpg connection under ``conn`` has seen its socket close (a killed server)."""
    fairy = conn.sync_connection._dbapi_connection if conn.sync_connection is not None else None
    driver = fairy.driver_connection if fairy is not None else None
    return driver is None or bool(driver.is_closed())


class PrimaryConnector:
    """SQLAlchemy's ``async_creator`` for a URL with several hosts: an asyncpg connection to the
    first host, in turn, that answers within the per-host timeout and has the URL's
    ``target_session_attrs``; the host that was chosen is tried first next time. Raises the last
    host's error when none fits (an outage to the callers: 503, a redelivered job)."""

    def __init__(self, url: str) -> None:
        _, options = PGDialect_asyncpg().create_connect_args(make_url(multihost.sqlalchemy_url(url)))  # type: ignore[no-untyped-call]
        self.timeout = HOST_CONNECT_TIMEOUT_SECONDS
        self.hosts: list[tuple[str, int]] = list(zip(options.pop("host"), options.pop("port"), strict=True))
        for adapter_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            options.pop(adapter_only, None)
        self.options: dict[str, Any] = options
        self.preferred = 0

    async def __call__(self) -> asyncpg.Connection:
        error: BaseException | None = None
        for step in range(len(self.hosts)):
            index = (self.preferred + step) % len(self.hosts)
            host, port = self.hosts[index]
            try:
                connection = await asyncpg.connect(host=host, port=port, timeout=self.timeout, **self.options)
            except _NEXT_HOST as failed:
                error = failed
                continue
            self.preferred = index
            return connection
        assert error is not None
        raise error


class Database:
    """The process's engine and its session factory."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # PostgreSQL: AUTOCOMMIT connections kept between uses (newest last, with when they were
        # last given back), at most pool_size: the pool's overflow (as many again) then serves
        # transactions, and the process never holds more than 2 × pool_size connections.
        self._idle: list[tuple[AsyncConnection, float]] = []
        self._idle_max = pool_size

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection on which every statement commits on its own: for a read that needs no
        transaction, or a write that is one statement (atomic and durable by itself). Two
        statements on it are two transactions.

        PostgreSQL: AUTOCOMMIT, so no BEGIN and no COMMIT/ROLLBACK round trips (a third of a
        one-statement transaction's client CPU). SQLite: one transaction (``BEGIN IMMEDIATE`` …
        COMMIT): the file's lock is taken either way."""
        if self.is_sqlite:
            async with self.engine.begin() as conn:
                yield conn
            return
        # A connection is kept in AUTOCOMMIT mode between uses instead of going back to the pool:
        # checking one out, switching it to AUTOCOMMIT and back cost about 100 µs of client CPU
        # a time, a tenth of a POST-as-GET's. One idle for POOL_PING_IDLE_SECONDS goes back to the
        # pool, whose checkout pings it; one that was lost (invalidated, closed) or interrupted
        # (a cancelled task: perhaps mid-statement) goes back too, to be reset or replaced.
        conn = await self._take_autocommit()
        try:
            yield conn
        except Exception:  # a refused request, a failed statement: the connection itself is fine
            await self._give_back(conn, reusable=True)
            raise
        except BaseException:
            await self._give_back(conn, reusable=False)
            raise
        await self._give_back(conn, reusable=True)

    async def _take_autocommit(self) -> AsyncConnection:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if not conn.closed and not conn.invalidated:
                if _driver_closed(conn):  # its server went away while it was idle: not back to the pool
                    await conn.invalidate()
                elif now - since < POOL_PING_IDLE_SECONDS:
                    return conn
            await conn.close()
        conn = await self.engine.connect()
        try:
            return await conn.execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            await conn.close()
            raise

    async def _give_back(self, conn: AsyncConnection, reusable: bool) -> None:
        if reusable and not conn.closed and not conn.invalidated and len(self._idle) < self._idle_max:
            driver = conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
            if driver is not None and not driver.is_closed() and not driver.is_in_transaction():
                self._idle.append((conn, time.monotonic()))
                return
        await conn.close()

    async def dispose(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _since in idle:
            await conn.close()
        await self.engine.dispose()
