"""Per upstream: its authz_strategy (from the signer's /upstreams), upstream validations pending and
the last failure (from the upstream journal), the same from the API, the console and the CLI
(on the database and through the admin API)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from acme_ra.config import ENV_PREFIX
from acme_ra.db.engine import Database
from acme_ra.db.models import Account, Order, UpstreamOrder
from acme_ra_tools.supervisor import free_port
from tests.support.lab import base_environment

from .conftest import acme_ra

# What a signer that is not ready says on /readyz, and on /upstreams (what it runs with).
SIGNER_READYZ = {"status": "unavailable", "failed": {"upstream": "upstream dns: HTTP 503"}}
SIGNER_UPSTREAMS = {
    "upstreams": [
        {"name": "dns", "authz_strategy": "dns-01",
         "dns_update": {"kind": "rfc2136", "server": "192.0.2.53:53", "tsig_key_name": "acme-ra"}},
        {"name": "hooked", "authz_strategy": "dns-01", "dns_update": {"kind": "hook", "path": "/usr/local/bin/txt"}},
        {"name": "sectigo", "authz_strategy": "prevalidated", "dns_update": None,
         "breaker": {"state": "open", "consecutive_failures": 3, "retry_in_seconds": 12.5,
                     "last_error": "https://sectigo.test/dir unreachable: ConnectError"}},
        {"name": "web", "authz_strategy": "http-01", "dns_update": None,
         "breaker": {"state": "closed", "consecutive_failures": 0}},
    ],
}
NOW = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)
REFUSED = {"type": "unauthorized",
           "detail": 'upstream "dns": did not validate www.example.org: Incorrect TXT record'}
# (upstream, state, dns_records, error, minutes before NOW): every state, and two failures of "dns".
JOURNAL = [
    ("dns", "pending", [["_acme-challenge.a.example.org", "v1"], ["_acme-challenge.a.example.org", "v2"]], None, 1),
    ("dns", "pending", None, None, 2),
    ("dns", "creating", None, None, 3),
    ("dns", "finalizing", None, None, 4),
    ("dns", "processing", None, None, 5),
    ("dns", "valid", None, None, 6),
    ("dns", "invalid", None, {"type": "unauthorized", "detail": "older"}, 60),
    ("dns", "invalid", [["_acme-challenge.b.example.org", "v3"]], REFUSED, 10),
    ("hooked", "valid", None, None, 1),
    ("retired", "invalid", None, {"type": "rejectedIdentifier", "detail": "no"}, 30),
    ("web", "pending", None, None, 7),
]


class FakeSigner(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's name
        answer, status = (SIGNER_UPSTREAMS, 200) if self.path == "/upstreams" else (SIGNER_READYZ, 503)
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@dataclass
class Admin:
    url: str
    env: dict[str, str]
    token: str
    order_ids: dict[tuple[str, str, int], str]


async def fill_journal(database_url: str) -> dict[tuple[str, str, int], str]:
    db = Database(database_url)
    ids: dict[tuple[str, str, int], str] = {}
    try:
        async with db.transaction() as session:
            account = Account(key_thumbprint="thumb-up", jwk={"kty": "EC"}, contact=[])
            session.add(account)
            await session.flush()
            for upstream, state, records, error, minutes in JOURNAL:
                order = Order(account_id=account.id, provisioner="acme", status="processing",
                              expires=NOW + dt.timedelta(days=1),
                              identifiers=[{"type": "dns", "value": "a.example.org"}])
                session.add(order)
                await session.flush()
                at = NOW - dt.timedelta(minutes=minutes)
                session.add(UpstreamOrder(order_id=order.id, upstream=upstream, state=state, dns_records=records,
                                          error=error, created_at=at, updated_at=at))
                ids[(upstream, state, minutes)] = order.id
    finally:
        await db.dispose()
    return ids


@pytest.fixture
def admin(fresh_database_url: str, tmp_path: Path) -> Iterator[Admin]:
    """A fake signer, the journal filled, and the admin service (a process) on that database."""
    signer = ThreadingHTTPServer(("127.0.0.1", 0), FakeSigner)
    threading.Thread(target=signer.serve_forever, daemon=True).start()
    port = free_port()
    env = base_environment() | {
        f"{ENV_PREFIX}STATE_DIR": str(tmp_path), f"{ENV_PREFIX}DATABASE_URL": fresh_database_url,
        f"{ENV_PREFIX}SIGNER_LISTEN": f"127.0.0.1:{signer.server_address[1]}",
        f"{ENV_PREFIX}ADMIN_LISTEN": f"127.0.0.1:{port}",
    }
    acme_ra(["db", "migrate"], env, check=True)
    order_ids = asyncio.run(fill_journal(fresh_database_url))
    token = json.loads(acme_ra(["admin-token", "create", "--label", "t", "--json"], env, check=True).stdout)["token"]
    process = subprocess.Popen([sys.executable, "-m", "acme_ra_admin"], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the admin service did not start"
            time.sleep(0.1)
        yield Admin(url, env, token, order_ids)
    finally:
        process.terminate()
        process.wait(timeout=15)
        signer.shutdown()
        signer.server_close()


def test_strategy_pending_and_last_failure_alike_from_api_cli_and_console(admin: Admin) -> None:
    api = httpx.get(f"{admin.url}/api/upstream", headers={"Authorization": f"Bearer {admin.token}"},
                    timeout=30, trust_env=False).raise_for_status().json()
    direct = json.loads(acme_ra(["upstream", "status", "--json"], admin.env).stdout)
    remote = json.loads(acme_ra(["upstream", "status", "--json", "--url", admin.url, "--token", admin.token],
                                admin.env).stdout)
    assert api == direct == remote
    by_name = {u["name"]: u for u in api["upstreams"]}
    assert list(by_name) == ["dns", "hooked", "retired", "sectigo", "web"]
    dns = by_name["dns"]
    assert dns["authz_strategy"] == "dns-01"
    assert dns["dns_update"] == {"kind": "rfc2136", "server": "192.0.2.53:53", "tsig_key_name": "acme-ra",
                                 "path": None}
    assert (dns["validations_pending"], dns["dns_records"]) == (2, 2)  # the pending ones only
    failure = dns["last_failure"]
    assert failure["order_id"] == admin.order_ids[("dns", "invalid", 10)]  # the newer failure
    assert (failure["type"], failure["detail"]) == (REFUSED["type"], REFUSED["detail"])
    assert dt.datetime.fromisoformat(failure["at"]).replace(tzinfo=dt.UTC) == NOW - dt.timedelta(minutes=10)
    hooked = by_name["hooked"]["dns_update"]
    assert hooked["kind"] == "hook" and hooked["path"] == "/usr/local/bin/txt"
    assert (by_name["hooked"]["validations_pending"], by_name["hooked"]["last_failure"]) == (0, None)
    open_breaker = {"state": "open", "consecutive_failures": 3, "retry_in_seconds": 12.5,
                    "last_error": "https://sectigo.test/dir unreachable: ConnectError"}
    assert by_name["sectigo"] == {"name": "sectigo", "authz_strategy": "prevalidated", "dns_update": None,
                                  "validations_pending": 0, "dns_records": 0, "last_failure": None,
                                  "breaker": open_breaker}
    assert by_name["web"] == {"name": "web", "authz_strategy": "http-01", "dns_update": None,
                              "validations_pending": 1, "dns_records": 0, "last_failure": None,
                              "breaker": {"state": "closed", "consecutive_failures": 0, "last_error": None,
                                          "retry_in_seconds": None}}
    assert by_name["dns"]["breaker"] is None  # the signer did not say (an older signer)
    # In the journal, no longer configured: its failure is still shown, its strategy unknown.
    retired = by_name["retired"]
    assert retired["authz_strategy"] is None and retired["last_failure"]["type"] == "rejectedIdentifier"
    assert "secret" not in json.dumps(api).lower()

    human = acme_ra(["upstream", "status"], admin.env)
    assert human.returncode == 1  # the signer is not ready
    assert "dns-01, rfc2136 192.0.2.53:53 (TSIG key acme-ra)" in human.stdout
    assert "validating    2 upstream order(s), 2 TXT record(s) published" in human.stdout
    assert f"last failure  2026-12-07 02:50:00 order {failure['order_id']}: unauthorized: {REFUSED['detail']}" \
        in human.stdout
    assert "dns-01, hook /usr/local/bin/txt" in human.stdout
    assert "unknown (the signer did not say)" in human.stdout
    assert "upstream web\n  strategy      http-01\n  breaker       closed\n  validating    1 upstream order(s)\n" \
        in human.stdout
    assert "  breaker       open after 3 failure(s), next probe in 12.5s: https://sectigo.test/dir unreachable: " \
        "ConnectError\n" in human.stdout

    with httpx.Client(base_url=admin.url, trust_env=False, timeout=30) as console:
        console.post("/login", data={"token": admin.token})
        page = console.get("/upstream")
    assert page.status_code == 200
    upstreams = page.text.split('<table id="upstreams">', 1)[1].split("</table>", 1)[0]
    assert "RFC 2136 <code>192.0.2.53:53</code> (TSIG key acme-ra)" in upstreams
    assert "hook <code>/usr/local/bin/txt</code>" in upstreams
    assert "<td>2 (2 TXT records published)</td>" in upstreams
    assert f'<a href="/orders/{failure["order_id"]}">' in upstreams
    assert "Incorrect TXT record" in upstreams and "older" not in upstreams
    assert "2026-12-07 02:50:00 UTC" in upstreams
    assert '<span class="status invalid">open</span> after 3 failure(s), next probe in 12.5s' in upstreams
    assert '<span class="status valid">closed</span>' in upstreams
