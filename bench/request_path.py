"""``python -m bench.request_path``: CPU time of the frontend per ACME request, in-process.

The frontend app is called directly over ASGI (no TLS, no HTTP parsing, no client library), with
bodies signed before the clock starts, so the figure is the frontend's own request path: JWS
checks, the nonce, the account, the handler, its statements, rendering. PostgreSQL's share (its
backend process) is not counted. Without CPU counters on a shared machine this is the steadiest
per-request figure: it moves with the code, much less with the neighbours than wall-clock rates.

Needs PostgreSQL on 127.0.0.1:5432 as ``postgres`` (a database is created and dropped) or
``--database-url sqlite``; starts a nats-server of its own. Validation and issuance are not run:
rows are moved on in the database where a step needs them (as tests/frontend does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, select, update

from acme_ra.config import Settings
from acme_ra.db import fast
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import Authorization, Certificate, Challenge, Order
from acme_ra.telemetry import setup_logging
from acme_ra_frontend.app import create_app
from acme_ra_tools.supervisor import free_port, nats_server_binary
from tests.conformance.client import TestAcmeClient, b64, make_csr
from tests.frontend.test_policy_profiles_ari import issued_order
from tests.support import database

EXTERNAL_URL = "https://ra.test"
Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def call(app: Asgi, method: str, url: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request straight into the ASGI app."""
    path = url.removeprefix(EXTERNAL_URL)
    path, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "https",
        "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"ra.test"), (b"content-type", b"application/jose+json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 443),
    }
    sent = False
    status = 0
    headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.update({k.decode(): v.decode() for k, v in message["headers"]})
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, headers, b"".join(chunks)


class Client:
    """Signs with tests.conformance's client; sends with :func:`call`."""

    def __init__(self, app: Asgi, acme: TestAcmeClient) -> None:
        self.app = app
        self.acme = acme

    async def nonce(self) -> str:
        _, headers, _ = await call(self.app, "HEAD", self.acme.directory["newNonce"])
        return headers["replay-nonce"]

    async def signed(self, url: str, payload: Any = "") -> bytes:
        return self.acme.sign(url, payload, await self.nonce())

    async def post(self, url: str, payload: Any = "") -> tuple[int, dict[str, str], Any]:
        status, headers, body = await call(self.app, "POST", url, await self.signed(url, payload))
        return status, headers, json.loads(body) if body.startswith(b"{") else body


STATEMENTS = [0]  # SQL statements sent (executemany counts once), for the statements per request


def count_statements(*_args: Any) -> None:
    STATEMENTS[0] += 1




async def measure(name: str, requests: list[tuple[str, bytes]], app: Asgi, expect: int) -> dict[str, Any]:
    """CPU and wall time of each request; the bodies were signed beforehand."""
    cpu: list[float] = []
    wall: list[float] = []
    statements = STATEMENTS[0]
    for url, body in requests:
        c0, w0 = time.process_time(), time.perf_counter()
        status, _, answer = await call(app, "POST", url, body)
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
        if status != expect:
            raise SystemExit(f"{name}: {status} {answer[:300]!r}")
    return {"request": name, "n": len(cpu), "statements": round((STATEMENTS[0] - statements) / len(cpu), 2),
            "cpu_ms_mean": round(statistics.fmean(cpu), 3),
            "cpu_ms_median": round(statistics.median(cpu), 3), "wall_ms_median": round(statistics.median(wall), 3)}


async def run(settings: Settings, count: int) -> list[dict[str, Any]]:
    app = create_app(settings)
    results = []
    async with app.router.lifespan_context(app):
        event.listen(app.state.ra.db.engine.sync_engine, "before_cursor_execute", count_statements)
        fast.observers.append(count_statements)  # those run straight on asyncpg
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=EXTERNAL_URL)
        http.app = app  # type: ignore[attr-defined]
        acme = TestAcmeClient(http, f"{EXTERNAL_URL}/acme/acme/directory")
        await acme.load_directory()
        assert (await acme.register()).status == 201
        client = Client(app, acme)
        state = app.state.ra

        # newOrder: a new name each time.
        new_order = acme.directory["newOrder"]
        bodies = [(new_order, await client.signed(new_order, {"identifiers": [{"type": "dns", "value": f"n{i}.example.org"}]}))
                  for i in range(count)]
        results.append(await measure("newOrder", bodies, app, 201))

        status, headers, order = await client.post(new_order, {"identifiers": [{"type": "dns", "value": "poll.example.org"}]})
        order_url = headers["location"]
        authz_url = order["authorizations"][0]
        bodies = [(authz_url, await client.signed(authz_url)) for _ in range(count)]
        results.append(await measure("authz (POST-as-GET)", bodies, app, 200))
        bodies = [(order_url, await client.signed(order_url)) for _ in range(count)]
        results.append(await measure("order poll", bodies, app, 200))

        # challenge POST: one pending challenge per new order.
        challenge_urls = []
        for i in range(count):
            _, _, created = await client.post(new_order, {"identifiers": [{"type": "dns", "value": f"c{i}.example.org"}]})
            _, _, authz = await client.post(created["authorizations"][0])
            challenge_urls.append(next(c["url"] for c in authz["challenges"] if c["type"] == "http-01"))
        bodies = [(url, await client.signed(url, {})) for url in challenge_urls]
        results.append(await measure("challenge POST", bodies, app, 200))

        # finalize: orders made ready in the database (as a validator would).
        finalize_urls = []
        for i in range(count):
            _, headers, created = await client.post(new_order, {"identifiers": [{"type": "dns", "value": f"f{i}.example.org"}]})
            order_id = headers["location"].rsplit("/", 1)[1]
            authz_id = created["authorizations"][0].rsplit("/", 1)[1]
            async with state.db.transaction() as session:
                await session.execute(update(Authorization).where(Authorization.id == authz_id).values(status="valid"))
                await session.execute(update(Challenge).where(Challenge.authz_id == authz_id, Challenge.type == "http-01")
                                      .values(status="valid"))
                await session.execute(update(Order).where(Order.id == order_id).values(status="ready"))
            finalize_urls.append((created["finalize"], f"f{i}.example.org"))
        bodies = []
        for url, name in finalize_urls:
            csr, _ = make_csr([name])
            bodies.append((url, await client.signed(url, {"csr": b64(csr)})))
        results.append(await measure("finalize", bodies, app, 200))

        _, pem = await issued_order(acme, http, "cert.example.org")
        async with state.db.sessions() as session:
            cert_id = (await session.execute(select(Certificate.id).where(Certificate.chain_pem == pem))).scalar_one()
        cert_url = acme.directory["newOrder"].replace("new-order", f"certificate/{cert_id}")
        bodies = [(cert_url, await client.signed(cert_url)) for _ in range(count)]
        results.append(await measure("certificate", bodies, app, 200))

        nonce_cpu, nonce_wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            status, _, _ = await call(app, "HEAD", acme.directory["newNonce"])
            assert status == 200, status
        results.append({"request": "newNonce (HEAD)", "n": count,
                        "cpu_ms_mean": round((time.process_time() - nonce_cpu) * 1000 / count, 3),
                        "wall_ms_median": round((time.perf_counter() - nonce_wall) * 1000 / count, 3)})
        await http.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.request_path", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="requests measured per kind (default 200)")
    parser.add_argument("--database-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    # Logged as the service logs (one JSON line per request at info), into /dev/null.
    setup_logging("frontend", "info")
    devnull = open(os.devnull, "w")  # noqa: SIM115 - for the whole run
    logging.getLogger().handlers[0].setStream(devnull)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as work:
        if args.database_url != "sqlite":
            os.environ[database.TEST_DATABASE_ENV] = args.database_url
        else:
            os.environ.pop(database.TEST_DATABASE_ENV, None)
        port = free_port()
        nats = subprocess.Popen([str(nats_server_binary()), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", work],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            with database.fresh_database(Path(work) / "db") as url:
                upgrade(url)
                settings = Settings(database_url=url, nats_url=f"nats://127.0.0.1:{port}", external_url=EXTERNAL_URL,
                                    state_dir=Path(work) / "state", rate_new_accounts_per_ip_per_hour=0,
                                    rate_new_orders_per_account_per_hour=0, log_level="info",
                                    answer_wait_seconds=0)  # no validator or signer runs here
                results = asyncio.run(run(settings, args.count))
        finally:
            nats.terminate()
            nats.wait(10)
    print(f"{'request':<22} {'n':>5} {'statements':>10} {'CPU ms mean':>12} {'median':>8} {'wall median':>12}")
    for row in results:
        print(f"{row['request']:<22} {row['n']:>5} {row.get('statements', ''):>10} {row['cpu_ms_mean']:>12} "
              f"{row.get('cpu_ms_median', ''):>8} {row.get('wall_ms_median', ''):>12}")


if __name__ == "__main__":
    main()
