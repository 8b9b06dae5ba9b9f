"""Benchmark (not a test): what the database costs the validator's and the signer's job, per job.

No network and no upstream: the validator's check is replaced by "valid" and the signer signs
with the lab CA in-process, so what is measured is the job path around them — the validator's
read of the challenge and its outcome (``ChallengeValidator.handle``), the signer's read of the
order and the certificate's store (``IssueWorker.handle`` with the lab driver). For N jobs run C
at a time it prints this process's CPU per job and exact counts per job: transactions
(BEGIN … COMMIT/ROLLBACK sent to the database), statements, and what SQLAlchemy ran on an
autocommit connection (no BEGIN). Run:

    .venv/bin/python -m tests.db.bench_job_db [-n 300] [-c 8] [--repeat 3] [--database-url URL]

``--database-url`` takes an empty PostgreSQL database (postgresql+asyncpg://...); the default is
a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event

from acme_ra import bus
from acme_ra.db import fast
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra_signer import labca
from acme_ra_signer.upstream.lab import LabDriver
from acme_ra_signer.worker import IssueWorker
from acme_ra_validator.http01 import ValidationPorts
from acme_ra_validator.network import NetworkPolicy
from acme_ra_validator.worker import ChallengeToCheck, ChallengeValidator, ValidationOptions
from tests.signer.conftest import insert_order, make_csr
from tests.validator.rows import insert_pending_order


class DbCounts:
    """Transactions and statements of one engine, from SQLAlchemy's events and those run straight
    on asyncpg (``acme_ra.db.fast.observers``). A connection in
    AUTOCOMMIT sends no BEGIN, COMMIT or ROLLBACK: its statements are counted apart."""

    def __init__(self, db: Database) -> None:
        self.transactions = self.statements = self.autocommit = 0
        engine = db.engine.sync_engine
        event.listen(engine, "commit", self._ended)
        event.listen(engine, "rollback", self._ended)
        event.listen(engine, "before_cursor_execute", self._statement)
        fast.observers.append(lambda _statement, conn: self._statement(conn.sync_connection))  # on asyncpg

    @staticmethod
    def _is_autocommit(connection: Any) -> bool:
        return bool(connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    def _ended(self, connection: Any) -> None:
        if not self._is_autocommit(connection):
            self.transactions += 1

    def _statement(self, connection: Any, *_args: Any) -> None:
        self.statements += 1
        if self._is_autocommit(connection):
            self.autocommit += 1

    def snapshot(self) -> tuple[int, int, int]:
        return self.transactions, self.statements, self.autocommit

    @staticmethod
    def per(counted: list[int], n: int) -> str:
        transactions, statements, autocommit = counted
        return (
            f"{transactions / n:.2f} transactions, {statements / n:.2f} statements "
            f"({autocommit / n:.2f} of them autocommit)"
        )


class Msg:
    """The part of a JetStream message the handlers use."""

    headers = None

    async def ack(self) -> None:
        return None

    async def in_progress(self) -> None:
        return None


async def _always_valid(_challenge: ChallengeToCheck) -> dict[str, Any] | None:
    return None


async def timed(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """This process's CPU seconds for ``n`` calls of ``one``, ``concurrency`` at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with slots:
            await one(i)

    cpu = time.process_time()
    await asyncio.gather(*(run(i) for i in range(n)))
    return time.process_time() - cpu


Job = Callable[[int], Awaitable[None]]


async def validator_jobs(db: Database, validator: ChallengeValidator, n: int, tag: str) -> Job:
    """``n`` pending challenges in the database; the job that validates the i-th."""
    rows = [await insert_pending_order(db, f"v{i}-{tag}.bench.test") for i in range(n)]

    def job(i: int) -> Awaitable[None]:
        return validator.handle(bus.ValidateJob(challenge_id=rows[i].challenge_id, order_id=rows[i].order_id), Msg())  # type: ignore[arg-type]

    return job


async def signer_jobs(db: Database, worker: IssueWorker, n: int, tag: str) -> Job:
    """``n`` finalized orders in the database; the job that issues the i-th."""
    orders = []
    for i in range(n):
        names = [f"s{i}-{tag}.bench.test"]
        orders.append(await insert_order(db, names, make_csr(names)))
    return lambda i: worker.handle(bus.IssueJob(order_id=orders[i]), Msg())


async def bench(n: int, concurrency: int, repeat: int, database_url: str | None, workdir: Path) -> None:
    url = database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    await asyncio.to_thread(upgrade, url)
    db = Database(url, pool_size=max(10, concurrency * 2))
    counts = DbCounts(db)
    options = ValidationOptions(ports=ValidationPorts(80, 443), network_policy=NetworkPolicy.from_lists(""))
    validator = ChallengeValidator(db, None, None, options, authz_lifetime=dt.timedelta(days=30))  # type: ignore[arg-type]
    # A stub check: the bench measures the job around it.
    validator.validate = _always_valid  # type: ignore[method-assign,assignment]
    ca, _ = labca.load_or_create(workdir / "lab-ca")
    worker = IssueWorker(db, LabDriver(ca, dt.timedelta(days=90)))
    print(f"database {url.split(':')[0]}; n={n} jobs per round, concurrency {concurrency}, {repeat} rounds")
    try:
        preparers: list[tuple[str, Callable[[int, str], Awaitable[Job]]]] = [
            ("validator job", lambda count, tag: validator_jobs(db, validator, count, tag)),
            ("signer job (lab CA)", lambda count, tag: signer_jobs(db, worker, count, tag)),
        ]
        for name, prepare in preparers:
            await timed(20, concurrency, await prepare(20, "warm"))
            cpu_per_job, counted = [], [0, 0, 0]
            for r in range(repeat):
                job = await prepare(n, str(r))
                before = counts.snapshot()
                cpu_per_job.append(await timed(n, concurrency, job) / n * 1000)
                counted = [total + now - then for total, now, then in zip(counted, counts.snapshot(), before)]
            print(
                f"  {name:<20} CPU ms/job: median {statistics.median(cpu_per_job):.2f} "
                f"(rounds {', '.join(f'{c:.2f}' for c in cpu_per_job)}); per job: {counts.per(counted, n * repeat)}"
            )
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="jobs per round")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (the median is reported)")
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(bench(args.n, args.concurrency, args.repeat, args.database_url, Path(workdir)))


if __name__ == "__main__":
    main()
