"""``python -m bench.statement_cost``: client CPU of one SQL statement, SQLAlchemy against asyncpg.

What a round trip to PostgreSQL costs the calling process, six ways: a prepared SELECT by primary
key through SQLAlchemy Core on an open connection, the same in ``engine.begin()`` (BEGIN, the
statement, COMMIT), both again through ``acme_ra.db.fast.Statement`` (the SQLAlchemy construct's
SQL run on the connection's asyncpg connection) and through asyncpg alone. The services talk to PostgreSQL through
SQLAlchemy Core; the difference is what a move of their hot statements to asyncpg would buy
(docs/performance.md). A table ``statement_cost_<random>`` is created and dropped.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Awaitable, Callable

import asyncpg
import uvloop
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, select
from sqlalchemy.ext.asyncio import create_async_engine

from acme_ra.db.fast import Statement

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
ROWS = 100


async def cpu_per_call(call: Callable[[int], Awaitable[object]], count: int) -> float:
    """Microseconds of this process's CPU per call, after a warm-up."""
    for i in range(min(200, count)):
        await call(i)
    started = time.process_time()
    for i in range(count):
        await call(i)
    return (time.process_time() - started) / count * 1e6


async def measure(url: str, count: int) -> dict[str, float]:
    metadata = MetaData()
    table = Table(f"statement_cost_{secrets.token_hex(4)}", metadata,
                  Column("id", Integer, primary_key=True), Column("value", String))
    by_id = select(table.c.id, table.c.value).where(table.c.id == bindparam("id"))
    engine = create_async_engine(url, pool_size=2)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(table.insert(), [{"id": i, "value": "x" * 20} for i in range(ROWS)])
    driver = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        prepared = await driver.prepare(f"SELECT id, value FROM {table.name} WHERE id = $1")
        results: dict[str, float] = {}
        fast_by_id = Statement(by_id)
        async with engine.connect() as conn:
            async def core(i: int) -> object:
                return (await conn.execute(by_id, {"id": i % ROWS})).first()

            results["SQLAlchemy Core, open connection"] = await cpu_per_call(core, count)

            async def fast(i: int) -> object:
                return (await fast_by_id.run(conn, {"id": i % ROWS})).first()

            results["acme_ra.db.fast.Statement, open connection"] = await cpu_per_call(fast, count)

        async def core_transaction(i: int) -> object:
            async with engine.begin() as conn:
                return (await conn.execute(by_id, {"id": i % ROWS})).first()

        results["SQLAlchemy Core, begin + statement + commit"] = await cpu_per_call(core_transaction, count // 4)

        async def fast_transaction(i: int) -> object:
            async with engine.begin() as conn:
                return (await fast_by_id.run(conn, {"id": i % ROWS})).first()

        results["fast.Statement, begin + statement + commit"] = await cpu_per_call(fast_transaction, count // 4)

        async def raw(i: int) -> object:
            return await prepared.fetchrow(i % ROWS)

        results["asyncpg, prepared statement"] = await cpu_per_call(raw, count)

        async def raw_transaction(i: int) -> object:
            async with driver.transaction():
                return await prepared.fetchrow(i % ROWS)

        results["asyncpg, transaction + statement"] = await cpu_per_call(raw_transaction, count // 4)
        return results
    finally:
        await driver.close()
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.statement_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL, help=f"PostgreSQL (default {DEFAULT_URL})")
    parser.add_argument("--count", type=int, default=3000, help="statements per measurement (default 3000)")
    args = parser.parse_args()
    results = uvloop.run(measure(args.database_url, args.count))
    for name, micros in results.items():
        print(f"{name:<48} {micros:8.0f} µs of CPU")


if __name__ == "__main__":
    main()
