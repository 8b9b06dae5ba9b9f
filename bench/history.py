"""``python -m bench.history``: fill a migrated acme-ra database with years of order history.

    python -m bench.history --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/ra --orders 1000000

Each historical order comes with what the services write for it — its authorization, three
challenges, the link between them, its upstream journal row and, when it was issued, its
certificate — through the same schema (the tables of acme_ra.db.models). The mix is what an RA
that has run for a few years holds: most orders issued and their certificates long expired, a
recent tail still valid, a share invalid and a share abandoned (pending until they expired), and
a few revoked. Times are spread over ``--years`` back from now.

PostgreSQL: COPY (asyncpg's ``copy_records_to_table``) in chunks of 10,000 orders (50,000 orders,
380,000 rows, took 12 s on the 2-core machine while it ran other work); SQLite: multi-row INSERTs.
The database must be migrated (``acme-ra db migrate``); the accounts the orders belong to are
created here, ``--accounts`` of them (default: one per hundred orders). ANALYZE follows, so the
planner knows the new sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import JSON, Table, TypeDecorator, insert, text

from acme_ra.db.engine import Database
from acme_ra.db.models import (
    Account,
    Authorization,
    Certificate,
    Challenge,
    Order,
    OrderAuthorization,
    UpstreamOrder,
    new_id,
    utcnow,
)

# Orders per chunk: one COPY per table per chunk.
CHUNK = 10_000
# The mix of order outcomes (fractions of all orders).
MIX = {"issued": 0.75, "invalid": 0.15, "abandoned": 0.09, "revoked": 0.01}
CERT_DAYS = 90
ORDER_LIFETIME = dt.timedelta(days=1)
AUTHZ_LIFETIME = dt.timedelta(days=30)
ISSUER = "CN=History Issuing CA,O=acme-ra bench"
# A certificate's PEM as stored (about the size of a leaf and its intermediate; not parsed here).
CHAIN_PEM = "-----BEGIN CERTIFICATE-----\n" + ("A" * 64 + "\n") * 40 + "-----END CERTIFICATE-----\n"


def _tables() -> dict[str, Table]:
    return {model.__tablename__: model.__table__ for model in  # type: ignore[misc]
            (Account, Order, Authorization, Challenge, OrderAuthorization, UpstreamOrder, Certificate)}


class HistoryMaker:
    """Rows for ``orders`` orders of ``accounts`` accounts, chunk by chunk."""

    def __init__(self, orders: int, accounts: int | list[str], years: float, seed: int, now: dt.datetime) -> None:
        self.orders, self.years, self.now = orders, years, now
        self.random = random.Random(seed)
        self.accounts = list(accounts) if isinstance(accounts, list) else [new_id() for _ in range(accounts)]
        self.outcomes = list(MIX)
        self.weights = list(MIX.values())
        # Hosts renew about every two months: so many distinct hosts over the years.
        self.hosts = max(1, int(orders / max(years * 6, 1)))

    def account_rows(self) -> list[dict[str, Any]]:
        return [{"id": account, "key_thumbprint": new_id() + new_id(), "jwk": {"kty": "EC", "crv": "P-256"},
                 "status": "valid", "contact": [], "tos_agreed": True, "created_at": self.now - dt.timedelta(days=3650)}
                for account in self.accounts]

    def chunks(self) -> Iterator[dict[str, list[dict[str, Any]]]]:
        span = dt.timedelta(days=365 * self.years)
        for start in range(0, self.orders, CHUNK):
            rows: dict[str, list[dict[str, Any]]] = {name: [] for name in
                                                     ("orders", "authorizations", "challenges", "order_authorizations",
                                                      "upstream_orders", "certificates")}
            for _ in range(min(CHUNK, self.orders - start)):
                self._order(rows, self.now - span * self.random.random())
            yield rows

    def _order(self, rows: dict[str, list[dict[str, Any]]], created: dt.datetime) -> None:
        outcome = self.random.choices(self.outcomes, self.weights)[0]
        account = self.random.choice(self.accounts)
        order_id, authz_id = new_id(), new_id()
        name = f"host{self.random.randrange(self.hosts)}.example.edu"
        issued = outcome in ("issued", "revoked")
        status = {"issued": "valid", "revoked": "valid", "invalid": "invalid", "abandoned": "pending"}[outcome]
        certificate_id = new_id() if issued else None
        rows["orders"].append({
            "id": order_id, "account_id": account, "provisioner": "acme", "status": status,
            "expires": created + ORDER_LIFETIME, "identifiers": [{"type": "dns", "value": name}],
            "not_before": None, "not_after": None, "error": None, "csr": None, "certificate_id": certificate_id,
            "trace_context": None, "created_at": created, "updated_at": created, "profile": None, "replaces": None,
            "republished": 0})
        authz_status = {"pending": "pending", "invalid": "invalid"}.get(status, "valid")
        rows["authorizations"].append({
            "id": authz_id, "account_id": account, "identifier_type": "dns", "identifier_value": name,
            "wildcard": False, "status": authz_status, "expires": created + AUTHZ_LIFETIME, "created_at": created})
        for kind in ("http-01", "dns-01", "tls-alpn-01"):
            chosen = kind == "http-01"
            challenge_status = ("valid" if authz_status == "valid" else authz_status) if chosen else "pending"
            rows["challenges"].append({
                "id": new_id(), "authz_id": authz_id, "type": kind, "token": new_id(), "status": challenge_status,
                "validated": created if challenge_status == "valid" else None, "error": None,
                "updated_at": created, "republished": 0, "check_attempts": 0})
        rows["order_authorizations"].append({"order_id": order_id, "authz_id": authz_id, "position": 0})
        if outcome == "abandoned":
            return
        rows["upstream_orders"].append({
            "order_id": order_id, "upstream": "default", "state": "valid" if issued else "invalid",
            "url": None, "finalize_url": None, "certificate_url": None, "account_url": None,
            "finalized_at": created, "orders_created": 1, "error": None, "dns_records": None,
            "lease_owner": None, "lease_until": None, "created_at": created, "updated_at": created})
        if issued:
            rows["certificates"].append({
                "id": certificate_id, "order_id": order_id, "account_id": account, "serial": new_id(),
                "chain_pem": CHAIN_PEM, "names_sha256": hashlib.sha256(name.encode()).hexdigest(),
                "issuer": ISSUER, "not_before": created, "not_after": created + dt.timedelta(days=CERT_DAYS),
                "created_at": created, "revoked_at": created + dt.timedelta(days=3) if outcome == "revoked" else None,
                "revocation_reason": 1 if outcome == "revoked" else None, "ari_cert_id": None,
                "alternate_chains_pem": None})


def _bound(column: Any, value: Any, dialect: Any) -> Any:
    """``value`` as COPY wants it: what the column type binds (naive UTC times), JSON as text."""
    if value is None:
        return None
    if isinstance(column.type, TypeDecorator):
        return column.type.process_bind_param(value, dialect)
    if isinstance(column.type, JSON):
        return json.dumps(value)
    return value


async def _copy(db: Database, tables: dict[str, Table], rows: dict[str, list[dict[str, Any]]]) -> None:
    """One chunk: COPY on PostgreSQL (JSON columns as text), multi-row INSERTs on SQLite."""
    async with db.engine.begin() as conn:
        if db.is_sqlite:
            for name, values in rows.items():
                if values:
                    await conn.execute(insert(tables[name]), values)
            return
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None  # an open connection
        for name, values in rows.items():
            if not values:
                continue
            columns = list(tables[name].columns)
            records = [tuple(_bound(column, row.get(column.name), conn.dialect) for column in columns) for row in values]
            names = [column.name for column in columns]
            await raw.copy_records_to_table(name, records=records, columns=names)


async def fill(database_url: str, orders: int, accounts: int | list[str] | None = None, years: float = 3.0,
               seed: int = 1, progress: bool = False) -> dict[str, Any]:
    """Add ``orders`` historical orders to a migrated database; returns rows written and time.
    ``accounts``: how many new accounts they belong to, or the ids of existing ones."""
    db = Database(database_url)
    tables = _tables()
    maker = HistoryMaker(orders, accounts or max(10, orders // 100), years, seed, utcnow())
    started = time.perf_counter()
    written = dict.fromkeys(tables, 0)
    try:
        if not isinstance(accounts, list):
            account_rows = maker.account_rows()
            await _copy(db, tables, {"accounts": account_rows})
            written["accounts"] = len(account_rows)
        for number, rows in enumerate(maker.chunks(), start=1):
            await _copy(db, tables, rows)
            for name, values in rows.items():
                written[name] += len(values)
            if progress:
                print(f"  {min(number * CHUNK, orders):>9} orders  {time.perf_counter() - started:6.1f} s",
                      file=sys.stderr)
        async with db.engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    finally:
        await db.dispose()
    return {"orders": orders, "rows": written, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a migrated acme-ra database (ACME_RA_DATABASE_URL form)")
    parser.add_argument("--orders", type=int, required=True, help="historical orders to add")
    parser.add_argument("--accounts", type=int, default=None, help="accounts they belong to (default: orders/100)")
    parser.add_argument("--account", action="append", default=None, metavar="ID",
                        help="an existing account the orders belong to instead (repeatable)")
    parser.add_argument("--years", type=float, default=3.0, help="how far back the history goes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")
    args = parser.parse_args(argv)
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    done = asyncio.run(fill(args.database_url, args.orders, args.account or args.accounts, args.years, args.seed,
                            progress=not args.json))
    if args.json:
        print(json.dumps(done))
        return 0
    print(f"{done['orders']} orders in {done['seconds']} s: " +
          ", ".join(f"{name} {count}" for name, count in done["rows"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
