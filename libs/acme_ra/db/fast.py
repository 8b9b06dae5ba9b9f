"""Prebuilt statements run straight on asyncpg on PostgreSQL, through SQLAlchemy elsewhere.

A hot path's statement is written once, as a SQLAlchemy Core construct (the frontend's
``repo/`` modules...). On PostgreSQL, ``Statement`` compiles it once for asyncpg and then runs
the SQL text on the request's own asyncpg connection (asyncpg prepares it once per connection and
keeps it): no SQLAlchemy execution context, result proxy or greenlet hop per statement, which cost
about four times the driver's own client CPU (``python -m bench.statement_cost``: 137 against
31 µs). Bind and result values go through the same type processors SQLAlchemy would apply
(``UTCDateTime``, JSON), and rows keep attribute access, so callers see no difference. On SQLite
(the test lane, small labs) the statement simply runs through SQLAlchemy.

The statement joins the SQLAlchemy connection's transaction: when that connection is not in
autocommit mode and has not started its transaction yet, it is started first (SQLAlchemy's asyncpg
adapter begins lazily, on its first statement). A connection lost under a statement invalidates
the pooled connection, as SQLAlchemy does for its own statements.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
# An expanding IN list (``in_(bindparam(..., expanding=True))`` or ``in_([literals])``) as
# compiled; asyncpg gets it as one array parameter instead.
_POSTCOMPILE = re.compile(r"(NOT )?IN \(__\[POSTCOMPILE_(\w+)\]\)")
# Errors after which the connection is unusable (PostgreSQL restarted, network cut, or the server
# is a standby now: a write refused with read_only_sql_transaction after a failover); others are
# recognised by the connection being closed afterwards.
_LOST = (asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InterfaceError,
         asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.ReadOnlySQLTransactionError,
         ConnectionError, OSError)


# Called with (statement, connection) before each statement run straight on asyncpg: where
# benchmarks and tests count them, as SQLAlchemy's ``before_cursor_execute`` counts its own.
# Empty in the services.
observers: list[Callable[[Statement, AsyncConnection], None]] = []


class Rows:
    """What a caller reads of a result: the rows, or the number of rows an UPDATE changed."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar_one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0][0]


class Statement:
    """One prebuilt statement; ``await run(conn, params)`` gives ``all()``, ``first()``,
    ``scalar_one()`` and ``rowcount``, on either back end. ``params`` may be a list of dicts (an
    executemany: one round trip on asyncpg; rowcount and rows are not returned then)."""

    __slots__ = ("_binds", "_results", "_returns_rows", "_row", "_sql", "columns", "statement")

    def __init__(self, statement: Any, columns: Sequence[str] | None = None) -> None:
        """``columns``: for a bare ``insert(Table)``, the columns every execution gives values for."""
        self.statement = statement
        self.columns = list(columns) if columns is not None else None
        self._sql: str | None = None
        self._binds: list[tuple[str, Callable[[Any], Any] | None, Any, bool]] = []
        self._row: Any = None
        self._results: list[Callable[[Any], Any] | None] = []
        self._returns_rows = False

    def _compile(self) -> str:
        compiled = self.statement.compile(dialect=_DIALECT, column_keys=self.columns)
        computed = [*compiled.insert_prefetch, *compiled.update_prefetch]
        if computed:  # defaults SQLAlchemy computes per execution: not in the SQL text
            raise ValueError(f"give {', '.join(c.key for c in computed)} a value in the statement")
        processors = compiled._bind_processors  # SQLAlchemy's own per-bind converters
        defaults = compiled.params
        names = list(compiled.positiontup or ())
        expanding = list(dict.fromkeys(name for _, name in _POSTCOMPILE.findall(str(compiled))))
        plain = [name for name in names if name not in expanding]
        numbers = {name: len(plain) + 1 + i for i, name in enumerate(expanding)}

        def as_array(match: re.Match[str]) -> str:
            operator = "<> ALL" if match.group(1) else "= ANY"
            return f"{operator}(${numbers[match.group(2)]})"

        sql = _POSTCOMPILE.sub(as_array, str(compiled))
        self._binds = [(name, processors.get(name), defaults.get(name), name in numbers)
                       for name in plain + expanding]
        columns = compiled._result_columns
        self._returns_rows = bool(columns)
        self._results = [column.type._cached_result_processor(_DIALECT, None)
                         for column in columns]
        self._row = namedtuple("Row", [column.keyname for column in columns], rename=True)  # type: ignore[misc]
        self._sql = sql
        return sql

    def _arguments(self, params: Mapping[str, Any]) -> list[Any]:
        arguments = []
        for name, processor, default, is_list in self._binds:
            value = params.get(name, default)
            if processor is not None:
                value = [processor(item) for item in value] if is_list else processor(value)
            elif is_list:
                value = list(value)
            arguments.append(value)
        return arguments

    async def run(self, conn: AsyncConnection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
        if conn.dialect.name != "postgresql":
            return await conn.execute(self.statement, params)
        sql = self._sql or self._compile()
        driver = await _joined_driver(conn)
        for observe in observers:
            observe(self, conn)
        try:
            if not isinstance(params, Mapping):
                await driver.executemany(sql, [self._arguments(p) for p in params])
                return Rows([], -1)
            arguments = self._arguments(params)
            if not self._returns_rows:
                status = await driver.execute(sql, *arguments)
                return Rows([], _rowcount(status))
            records = await driver.fetch(sql, *arguments)
        except Exception as error:
            if not isinstance(error, _LOST) and not driver.is_closed():
                raise
            # Gone (PostgreSQL restarted, the backend terminated, a standby now): not back into the pool, and an
            # outage to the caller (the frontend answers 503, a worker's job is retried), as
            # SQLAlchemy's own statements report it.
            await conn.invalidate()
            raise ConnectionError(f"the database connection was lost: {type(error).__name__}: {error}") from error
        return Rows([self._row._make(_convert(record, self._results)) for record in records], len(records))


def _convert(record: Iterable[Any], processors: list[Callable[[Any], Any] | None]) -> list[Any]:
    return [value if processor is None else processor(value) for value, processor in zip(record, processors)]


def _rowcount(status: str) -> int:
    """asyncpg's command tag ('UPDATE 3', 'INSERT 0 1') → the number of rows."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


async def _joined_driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under ``conn``, in ``conn``'s transaction if it has one."""
    sync = conn.sync_connection
    fairy = sync._dbapi_connection if sync is not None else None  # no greenlet hop
    if fairy is None:  # invalidated: let SQLAlchemy reconnect
        fairy = await conn.get_raw_connection()
    adapted: Any = fairy.dbapi_connection
    if adapted.isolation_level != "autocommit" and adapted._transaction is None:
        await adapted._start_transaction()  # SQLAlchemy's lazy BEGIN, done now
    return fairy.driver_connection
