"""The record of an upstream order, written before each upstream step (``upstream_orders``).

The ACME driver never sends newOrder or finalize without first recording that it is about to;
a redelivered job, a restart or another signer replica reads the record and resumes the same
upstream order. A signer writes a record only while it holds its lease, renewed by a heartbeat;
a signer that died loses the lease after ``lease_seconds`` and another one takes over.

Few transactions per issuance: the record of a new order is inserted by its first save (the
lease with it: a second signer's insert fails), what the upstream answered and no step depends
on is *noted* and written with the next save or lease renewal, the final state gives the lease
up in the same write, and a renewal writes only when the lease needs it.

Every write is one statement on ``Database.autocommit`` (PostgreSQL: durable when it returns,
with no BEGIN/COMMIT round trips), built once as Core on the table (an update once per set of
changed fields) and run as an ``acme_ra.db.fast.Statement`` (straight on asyncpg on PostgreSQL):
an ORM session per write cost more client CPU than the write itself, and SQLAlchemy's execution
of a Core statement still four times the driver's.

``MemoryJournal`` keeps the same record in memory, for upstream orders that belong to no
acme-ra order (the frontend's own TLS certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

import asyncpg
from sqlalchemy import Table, bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from acme_ra.db.engine import Database
from acme_ra.db.fast import Statement
from acme_ra.db.models import UpstreamOrder, UpstreamOrderState, utcnow
from acme_ra_signer.upstream.base import UpstreamUnavailable

log = logging.getLogger("acme_ra_signer.upstream.journal")

# How long a signer's claim on an upstream order lasts without renewal (seconds); a signer that
# died is replaced after at most this long. The heartbeat renews it every third of that. As
# short as the issue job's ack wait (bus.ISSUE_ACK_WAIT_SECONDS), so that the job a killed
# signer held, redelivered after that wait, finds the lease run out (or nearly) and resumes at
# once: a crash costs seconds, not the 30 s a client such as lego waits for its certificate.
# A live signer loses its lease only if its renewals stall for two thirds of it (~7 s), and then
# stops at its next write (LeaseLost); nothing is issued twice either way.
LEASE_SECONDS = 10.0


class UpstreamBusy(UpstreamUnavailable):
    """Another signer is working on this upstream order now; the job is retried later."""


class LeaseLost(UpstreamUnavailable):
    """This signer's lease expired and another signer took the order over; stop touching it."""


@dataclasses.dataclass
class Entry:
    """What is known of the upstream order (mirrors an ``upstream_orders`` row)."""

    upstream: str
    state: str = UpstreamOrderState.creating.value
    url: str | None = None
    finalize_url: str | None = None
    certificate_url: str | None = None
    account_url: str | None = None
    finalized_at: dt.datetime | None = None
    orders_created: int = 0
    error: dict[str, Any] | None = None
    dns_records: list[list[str]] | None = None


class Journal(Protocol):
    # The acme-ra order the upstream order belongs to (what it published is recorded under it).
    order_id: str
    entry: Entry

    async def save(self, **changes: Any) -> None:
        """Record ``changes`` (and anything noted) durably; only then may the step they announce
        be taken."""

    def note(self, **changes: Any) -> None:
        """Take ``changes`` into the entry now and record them with the next write: for what the
        upstream answered when no step depends on it being durable before the next save."""

    async def finish(self, **changes: Any) -> None:
        """Record a state from which every step left is idempotent (``valid``: download;
        ``invalid``) and give up the claim in the same write."""

    async def renew(self) -> None:
        """Keep the claim alive during a long wait (writing what was noted, when it writes)."""


class MemoryJournal:
    """A journal that lives as long as the process (nothing to resume after a restart)."""

    def __init__(self, upstream: str, order_id: str | None = None) -> None:
        self.order_id = order_id or f"memory-{secrets.token_hex(8)}"
        self.entry = Entry(upstream=upstream)

    async def save(self, **changes: Any) -> None:
        self.note(**changes)

    def note(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.entry, name, value)

    async def finish(self, **changes: Any) -> None:
        self.note(**changes)

    async def renew(self) -> None:
        return None


_FIELDS = [f.name for f in dataclasses.fields(Entry)]

# The statements of a journal, built once (Core on the table; parameters are named p_*).
_table = cast(Table, UpstreamOrder.__table__)
_COLUMNS = [_table.c[name] for name in _FIELDS]
_THIS_ORDER = _table.c.order_id == bindparam("p_order_id")
_READ = Statement(select(*_COLUMNS).where(_THIS_ORDER))
_TAKE = Statement(
    update(_table)
    .where(_THIS_ORDER, or_(_table.c.lease_owner.is_(None), _table.c.lease_until < bindparam("p_now")))
    .values(lease_owner=bindparam("p_owner"), lease_until=bindparam("p_lease_until"))
    .returning(*_COLUMNS)
)
_INSERT = Statement(insert(_table), ["order_id", *_FIELDS, "lease_owner", "lease_until", "created_at", "updated_at"])
# A second signer's INSERT of the same record: SQLAlchemy's error on SQLite, asyncpg's on PostgreSQL.
_DUPLICATE = (IntegrityError, asyncpg.exceptions.UniqueViolationError)
_MINE = _table.c.lease_owner == bindparam("p_owner")
_RELEASE = Statement(update(_table).where(_THIS_ORDER, _MINE).values(lease_owner=None, lease_until=None))
# One UPDATE per (fields written, lease given up or not): a handful in all.
_updates: dict[tuple[frozenset[str], bool], Statement] = {}


def _update_statement(fields: frozenset[str], released: bool) -> Statement:
    """The write of ``fields``, the lease and ``updated_at``, if this signer still holds the
    lease (or, ``released``, nobody took it since this signer gave it up)."""
    key = (fields, released)
    statement = _updates.get(key)
    if statement is None:
        mine = or_(_MINE, _table.c.lease_owner.is_(None)) if released else _MINE
        statement = Statement(
            update(_table)
            .where(_THIS_ORDER, mine)
            .values(
                {
                    **{name: bindparam(f"p_{name}") for name in sorted(fields)},
                    "lease_owner": bindparam("p_lease_owner"),
                    "lease_until": bindparam("p_lease_until"),
                    "updated_at": bindparam("p_now"),
                }
            )
        )
        _updates[key] = statement
    return statement


class DbJournal:
    """The ``upstream_orders`` row of one acme-ra order, held under a lease."""

    def __init__(self, db: Database, order_id: str, entry: Entry, owner: str, lease_seconds: float) -> None:
        self.db = db
        self.order_id = order_id
        self.entry = entry
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._stored = True  # False: no row yet, the first write inserts it
        self._released = False  # True after finish(): the lease was given up
        self._noted: dict[str, Any] = {}
        self._written_at = time.monotonic()  # when the lease was last written
        self._lock = asyncio.Lock()  # one write at a time (the heartbeat writes too)

    @classmethod
    @contextlib.asynccontextmanager
    async def claim(
        cls, db: Database, order_id: str, upstream: str, lease_seconds: float = LEASE_SECONDS
    ) -> AsyncIterator[DbJournal]:
        """Load the order's record and hold its lease until the block ends (a new record is
        inserted, lease included, by the first save). Raises ``UpstreamBusy`` when another live
        signer holds it."""
        owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"
        journal = cls(db, order_id, Entry(upstream=upstream), owner, lease_seconds)
        await journal._take()
        heartbeat = asyncio.create_task(journal._heartbeat(), name=f"lease-{order_id}")
        try:
            yield journal
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(Exception):  # an unreleased lease simply expires
                await journal._release()

    async def save(self, **changes: Any) -> None:
        self.note(**changes)
        await self._write()

    def note(self, **changes: Any) -> None:
        unknown = set(changes) - set(_FIELDS)
        if unknown:
            raise ValueError(f"not journal fields: {sorted(unknown)}")
        self._noted.update(changes)
        for name, value in changes.items():
            setattr(self.entry, name, value)

    async def finish(self, **changes: Any) -> None:
        self.note(**changes)
        await self._write(release=True)

    async def renew(self) -> None:
        """Renew the lease once a third of it has passed since the last write (until then nobody
        can have taken it over, so there is nothing to write), with what was noted. What was
        noted waits for that or the next save: no step depends on it."""
        if self._released or not self._stored:
            return
        if time.monotonic() - self._written_at >= self.lease_seconds / 3:
            await self._write()

    async def _take(self) -> None:
        """Read the record; when there is one, take its lease over if nobody holds it. Two
        statements that need no transaction around them: the UPDATE's condition decides."""
        now = utcnow()
        async with self.db.autocommit() as conn:
            row = (await _READ.run(conn, {"p_order_id": self.order_id})).first()
            if row is None:
                self._stored = False  # nothing to hold yet: the first save inserts the record
                return
            lease = {"p_owner": self.owner, "p_lease_until": now + dt.timedelta(seconds=self.lease_seconds)}
            taken = (await _TAKE.run(conn, {"p_order_id": self.order_id, "p_now": now, **lease})).first()
            if taken is None:
                raise UpstreamBusy(f"another signer is working on the upstream order of order {self.order_id}")
            self.entry = Entry(**taken._asdict())
        self._written_at = time.monotonic()

    async def _write(self, release: bool = False) -> None:
        async with self._lock:
            changes, self._noted = self._noted, {}
            try:
                if self._stored:
                    await self._update(changes, release)
                else:
                    await self._insert(release)
            except BaseException:
                self._noted = {**changes, **self._noted}  # still to be written
                raise
            self._released = release

    async def _insert(self, release: bool) -> None:
        now = utcnow()
        try:
            async with self.db.autocommit() as conn:
                await _INSERT.run(
                    conn,
                    {
                        "order_id": self.order_id,
                        **dataclasses.asdict(self.entry),
                        "lease_owner": None if release else self.owner,
                        "lease_until": None if release else now + dt.timedelta(seconds=self.lease_seconds),
                        "created_at": now,
                        "updated_at": now,
                    },
                )
        except _DUPLICATE:
            raise UpstreamBusy(f"another signer created the upstream order record of order {self.order_id}") from None
        self._stored = True
        self._written_at = time.monotonic()

    async def _update(self, changes: dict[str, Any], release: bool) -> None:
        now = utcnow()
        values = {f"p_{name}": value for name, value in changes.items()}
        lease_until = None if release else now + dt.timedelta(seconds=self.lease_seconds)
        values.update(
            p_order_id=self.order_id,
            p_owner=self.owner,
            p_lease_owner=None if release else self.owner,
            p_lease_until=lease_until,
            p_now=now,
        )
        # finish() gave the lease up: the write stands if nobody has taken it since.
        async with self.db.autocommit() as conn:
            result = await _update_statement(frozenset(changes), self._released).run(conn, values)
            if result.rowcount == 0:
                raise LeaseLost(f"lost the lease on the upstream order of order {self.order_id}")
        self._written_at = time.monotonic()

    async def _release(self) -> None:
        if not self._stored or self._released:
            return
        async with self.db.autocommit() as conn:
            await _RELEASE.run(conn, {"p_order_id": self.order_id, "p_owner": self.owner})

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except LeaseLost:
                log.warning("lease lost", extra={"order_id": self.order_id})
                return
            except Exception as error:  # noqa: BLE001 - a database hiccup: try again next beat
                log.warning("lease renewal failed: %s", error, extra={"order_id": self.order_id})
