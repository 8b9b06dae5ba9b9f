"""Benchmark (not a test): what the signer adds on top of the upstream's own time per issuance.

Starts a Pebble (EAB, always-valid, no sleeps) and measures, for N orders of one name each:

* baseline — the bare ACME protocol against Pebble with an already registered account, the
  same HTTP client and the same requests an ACME client needs (newOrder, authorization,
  challenge, poll, finalize, poll, download): Pebble's own time plus the network;
* signer   — the signer's issue job end to end (``IssueWorker.handle``): load the order, claim
  and journal the upstream order before each step, the same ACME walk, store the certificate;

then the same with C orders at once. Exact counts per issuance come with it: upstream requests
and the TCP connections they used (one keep-alive connection should carry them all), database
transactions (commits and rollbacks), statements, and pool pre-pings. Run:

    .venv/bin/python -m tests.upstream.bench_signer_overhead [-n 50] [-c 10] [--database-url URL]
        [--key-type ec256|rsa2048] [--transport lean|httpx] [--loop asyncio|uvloop]

``--transport`` picks the signer's HTTP transport: ``lean`` (default, what the signer uses without
a proxy: ``acme_ra.http_transport.LeanTransport``, called straight) or ``httpx`` (httpx's own,
what it uses through a proxy). ``--loop uvloop`` runs on the services' event loop.

``--database-url`` takes an empty PostgreSQL database (postgresql+asyncpg://...); the default is
a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import uvloop
from acme import messages
from cryptography import x509
from pydantic import SecretStr
from sqlalchemy import event

from acme_ra import bus
from acme_ra.config import Settings
from acme_ra.db import fast
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra.http_transport import Answer, LeanTransport
from acme_ra_signer.upstream.acme import AcmeUpstream
from acme_ra_signer.upstream.acme_client import PEM_CHAIN, tls_context
from acme_ra_signer.upstream.failover import AcmeDriver
from acme_ra_signer.upstream.polling import poll_delay
from acme_ra_signer.worker import IssueWorker
from tests.signer.conftest import insert_order, make_csr
from tests.upstream.pebble import Pebble


class CountingLean(LeanTransport):
    """LeanTransport counting its requests (the signer calls ``send`` straight) and connections."""

    requests = 0
    opened_before = 0

    async def send(self, *args: Any, **kwargs: Any) -> Answer:
        self.requests += 1
        return await super().send(*args, **kwargs)

    def reset(self) -> None:
        self.requests = 0
        self.opened_before = self.connections_opened

    def connections(self) -> str:  # those of the warm-up go on carrying requests
        return f"{self.connections_opened - self.opened_before} upstream connections opened"


class Counting(httpx.AsyncBaseTransport):
    """Counts the requests through an httpx transport and the connections that carried them
    (distinct network streams)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests = 0
        self.streams: set[int] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        response = await self.inner.handle_async_request(request)
        self.streams.add(id(response.extensions.get("network_stream")))
        return response

    def reset(self) -> None:
        self.requests = 0
        self.streams.clear()

    def connections(self) -> str:
        return f"{len(self.streams)} upstream connections in all"

    async def aclose(self) -> None:
        await self.inner.aclose()


class DbCounts:
    """Transactions, statements and pre-pings of one engine (SQLAlchemy events), and the
    statements ``acme_ra.db.fast.Statement`` runs straight on asyncpg (no SQLAlchemy event)."""

    def __init__(self, db: Database) -> None:
        self.commits = self.rollbacks = self.statements = self.pings = 0
        fast.observers.append(lambda _statement, _conn: self._add("statements"))
        engine = db.engine.sync_engine
        event.listen(engine, "commit", lambda _c: self._add("commits"))
        event.listen(engine, "rollback", lambda _c: self._add("rollbacks"))
        event.listen(engine, "before_cursor_execute", lambda *_a: self._add("statements"))
        do_ping = engine.dialect.do_ping

        def counted_ping(connection: Any) -> bool:
            self.pings += 1
            return bool(do_ping(connection))

        setattr(engine.dialect, "do_ping", counted_ping)  # noqa: B010 - a wrapper, for counting

    def _add(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)

    def reset(self) -> None:
        self.commits = self.rollbacks = self.statements = self.pings = 0

    def per(self, n: int) -> str:
        return (
            f"{self.commits / n:.1f} commits + {self.rollbacks / n:.1f} rollbacks, "
            f"{self.statements / n:.1f} statements, {self.pings / n:.1f} pre-pings"
        )


class Msg:
    async def ack(self) -> None:
        return None

    async def in_progress(self) -> None:
        return None


async def bare_issuance(upstream: AcmeUpstream, name: str) -> None:
    """The minimal ACME walk, no journal, no database (the account is already known)."""
    directory = await upstream.client.directory()
    csr = x509.load_der_x509_csr(make_csr([name]))
    response, _ = await upstream.signed(directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
    order_url = response.headers["Location"]
    order = messages.Order.from_json(response.json())
    for url in order.authorizations:
        authz = messages.Authorization.from_json((await upstream.signed(url, None))[0].json())
        if authz.status.name == "valid":
            continue
        challenge = next(c for c in authz.challenges if c.chall.typ == "http-01")
        await upstream.signed(challenge.uri, {})
        while messages.Authorization.from_json((await upstream.signed(url, None))[0].json()).status.name != "valid":
            await asyncio.sleep(0.05)
    response, _ = await upstream.signed(order.finalize, messages.CertificateRequest(csr=csr))
    order = messages.Order.from_json(response.json())
    attempt = 0  # as the signer: look at once, then back off
    while order.status.name != "valid":
        order = messages.Order.from_json((await upstream.signed(order_url, None))[0].json())
        if order.status.name != "valid":
            await asyncio.sleep(poll_delay(None, attempt))
            attempt += 1
    assert order.certificate is not None
    await upstream.signed(order.certificate, None, accept=PEM_CHAIN)


def summary(label: str, seconds: list[float], requests: float, cpu: float) -> dict[str, Any]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    row = {
        "label": label,
        "median_ms": statistics.median(seconds) * 1000,
        "p95_ms": p95 * 1000,
        "mean_ms": statistics.mean(seconds) * 1000,
        "requests": requests,
        "cpu_ms": cpu * 1000,
    }
    print(
        f"  {label:<28} median {row['median_ms']:7.1f} ms   p95 {row['p95_ms']:7.1f} ms   "
        f"mean {row['mean_ms']:7.1f} ms   {requests:4.1f} requests   {row['cpu_ms']:5.1f} ms CPU/issuance"
    )
    return row


async def timed(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> tuple[list[float], float, float]:
    """Per-issuance latencies, the wall time of the batch, and this process's CPU seconds."""
    durations: list[float] = []
    slots = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with slots:
            started = time.perf_counter()
            await one(i)
            durations.append(time.perf_counter() - started)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(run(i) for i in range(n)))
    return durations, time.perf_counter() - started, time.process_time() - cpu


KeyType = Literal["ec256", "rsa2048"]


def counting_transport(name: str, pebble: Pebble) -> CountingLean | Counting:
    trust = tls_context(str(pebble.ca_bundle))
    if name == "lean":
        return CountingLean(ssl_context=trust)
    return Counting(httpx.AsyncHTTPTransport(verify=trust, limits=httpx.Limits(max_connections=100)))


async def bench(
    n: int, concurrency: int, database_url: str | None, workdir: Path, key_type: KeyType, transport: str
) -> None:
    pebble = Pebble(workdir / "pebble")
    try:
        url = database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        await asyncio.to_thread(upgrade, url)
        settings = Settings(
            state_dir=workdir / "var",
            database_url=url,
            upstream="acme",
            upstream_directory_url=pebble.directory_url,
            upstream_eab_kid=pebble.eab_kid,
            upstream_eab_hmac_key=SecretStr(pebble.eab_hmac_key),
            upstream_ca_bundle=pebble.ca_bundle,
            secret_key=SecretStr("benchmark-sealing-secret-0123456789"),
            tls_cert_file=None,
            tls_key_file=None,
            config_file=None,
            secret_key_file=None,
            upstream_account_key_type=key_type,
        )
        db = Database(url, pool_size=max(10, concurrency * 2))
        counts = DbCounts(db)
        counter = counting_transport(transport, pebble)
        driver = AcmeDriver.from_settings(settings, db, transport=counter)
        upstream = driver.select()
        assert isinstance(upstream, AcmeUpstream)
        worker = IssueWorker(db, driver)
        await driver.check()  # register the account once, outside the measurements
        print(
            f"Pebble (EAB, PEBBLE_VA_ALWAYS_VALID=1, PEBBLE_VA_NOSLEEP=1); database {url.split(':')[0]}; "
            f"account key {key_type}; transport {transport}; loop {type(asyncio.get_running_loop()).__module__}; n={n}"
        )
        for level in (1, concurrency):
            print(f"concurrency {level}:")
            # Warm up both paths (connections, caches).
            await bare_issuance(upstream, "warm.bench.test")

            counter.reset()
            def bare(i: int, level: int = level) -> Awaitable[None]:
                return bare_issuance(upstream, f"b{i}-{level}.bench.test")

            base, base_wall, base_cpu = await timed(n, level, bare)
            b = summary("baseline (bare ACME)", base, counter.requests / n, base_cpu / n)

            orders = []
            for i in range(n):
                names = [f"s{i}-{level}.bench.test"]
                orders.append(await insert_order(db, names, make_csr(names)))
            counter.reset()
            counts.reset()
            def journaled(i: int, orders: list[str] = orders) -> Awaitable[None]:
                return worker.handle(bus.IssueJob(order_id=orders[i]), Msg())

            sig, sig_wall, sig_cpu = await timed(n, level, journaled)
            s = summary("signer job (journaled)", sig, counter.requests / n, sig_cpu / n)
            print(f"  per issuance: {counts.per(n)}; {counter.connections()}")
            print(
                f"  overhead: median {s['median_ms'] - b['median_ms']:+.1f} ms, "
                f"mean {s['mean_ms'] - b['mean_ms']:+.1f} ms"
                f" per issuance; throughput {n / base_wall:.1f}/s bare vs {n / sig_wall:.1f}/s signer"
            )
        await driver.close()
        await db.dispose()
    finally:
        pebble.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="issuances per measurement")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database (default: SQLite)")
    parser.add_argument("--key-type", default="ec256", choices=["ec256", "rsa2048"], help="upstream account key")
    parser.add_argument("--transport", default="lean", choices=["lean", "httpx"], help="HTTP transport to the CA")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"], help="event loop")
    args = parser.parse_args()
    loop_factory = uvloop.new_event_loop if args.loop == "uvloop" else None
    with tempfile.TemporaryDirectory() as workdir, asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(
            bench(
                args.n,
                args.concurrency,
                args.database_url,
                Path(workdir),
                cast(KeyType, args.key_type),
                args.transport,
            )
        )


if __name__ == "__main__":
    main()
