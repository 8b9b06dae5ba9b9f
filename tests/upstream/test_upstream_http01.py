"""Upstream http-01 against a Pebble that validates for real, resolving the test names through
a real BIND9 (every name is 127.0.0.1): the signer stores the key authorizations, acme-ra's
responder (``acme_ra_frontend.upstream_http01``) serves them, and a "host" web server on
Pebble's http-01 port redirects ``/.well-known/acme-challenge/`` to it with docs/upstream.md's
own lines (nginx, Apache, HAProxy, Caddy). No key authorization is left in the database after
success, failure, or a signer killed mid-validation; wildcards fail naming authz_strategy; the
responder serves nothing else."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra.db.models import UpstreamKeyAuthorization, utcnow
from acme_ra_frontend import upstream_http01
from acme_ra_signer import metrics as signer_metrics
from acme_ra_signer.upstream.acme_config import Upstream
from acme_ra_signer.upstream.base import UpstreamRejected
from acme_ra_signer.upstream.http01 import check_token
from acme_ra_signer.worker import IssueWorker
from acme_ra_tools.supervisor import free_port
from tests.support.bind import Bind, Zone
from tests.support.certbot import certonly, dns_names
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, base_environment
from tests.support.redirect_host import KINDS, OWN_SITE, RedirectHost
from tests.support.tcp_proxy import TcpProxy

from .conftest import (
    certificate_count,
    certificate_of,
    for_pebble,
    make_acme_driver,
    new_order,
    order_row,
    run_job,
    upstream_order_row,
    wait_until,
)
from .pebble import Pebble, require_pebble
from .test_upstream_dns01_certbot import topology_in_front_of
from .test_upstream_signer_killed import LINK_DELAY_SECONDS, KilledMidIssuance, signer_env

ZONES = [Zone("example.test")]  # "* IN A 127.0.0.1": every test name is this machine
TOKEN = "tok_" + "A" * 40


@pytest.fixture
def pebble(validating_pebble: Pebble) -> Pebble:
    """Here Pebble validates for real, resolving through ``bind`` (this module's ZONES)."""
    return validating_pebble


class Responder:
    """acme-ra's responder on a free port of this test's event loop and database."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.port = free_port()
        self.sock = upstream_http01.bind(f"127.0.0.1:{self.port}")
        self.task = asyncio.create_task(upstream_http01.serve(self.sock, db, settings))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def started(self) -> Responder:
        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            return True

        await wait_until(listening, timeout=10)
        return self

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def responder(db: Database, settings: Settings) -> AsyncIterator[Responder]:
    """The responder on the signer's database (the tests with Pebble)."""
    server = Responder(db, settings)
    try:
        yield await server.started()
    finally:
        await server.stop()


@pytest.fixture
def key_db_url(fresh_database_url: str) -> str:
    upgrade(fresh_database_url)  # alembic runs its own event loop: not inside the test's
    return fresh_database_url


@pytest.fixture
async def key_db(key_db_url: str) -> AsyncIterator[Database]:
    """A migrated database of the lane's kind, for the tests of the responder alone."""
    database = Database(key_db_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def lone_responder(key_db: Database, tmp_path: Path) -> AsyncIterator[Responder]:
    """The responder without Pebble or a signer (settings: the defaults, for the HTTP limits)."""
    server = Responder(key_db, Settings(state_dir=tmp_path, nats_url=""))
    try:
        yield await server.started()
    finally:
        await server.stop()


@pytest.fixture
def host(tmp_path: Path, pebble: Pebble, responder: Responder) -> Iterator[RedirectHost]:
    """nginx on Pebble's http-01 port, redirecting with the doc's lines to the responder."""
    server = RedirectHost("nginx", tmp_path / "nginx", pebble.http_port, responder.address)
    try:
        yield server
    finally:
        server.stop()


async def key_authorization_rows(db: Database) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(UpstreamKeyAuthorization)) or 0)


async def store(db: Database, token: str, value: str, expires_in: float = 600, order_id: str = "order-1") -> None:
    async with db.transaction() as session:
        session.add(UpstreamKeyAuthorization(
            token=token, order_id=order_id, upstream="default", identifier="www.example.test",
            key_authorization=value, expires_at=utcnow() + dt.timedelta(seconds=expires_in),
        ))


def http01_settings(settings: Settings, pebble: Pebble, **overrides: object) -> Settings:
    return for_pebble(settings, pebble, upstream_authz_strategy="http-01", **overrides)


# The responder alone ------------------------------------------------------------------------

async def test_responder_serves_known_tokens_and_nothing_else(lone_responder: Responder, key_db: Database) -> None:
    await store(key_db, TOKEN, f"{TOKEN}.thumbprint")
    await store(key_db, "expired" + "B" * 30, "old.value", expires_in=-1)
    base = f"http://{lone_responder.address}"
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=10) as client:
        served = await client.get(f"/.well-known/acme-challenge/{TOKEN}")
        assert served.status_code == 200 and served.text == f"{TOKEN}.thumbprint"
        assert served.headers["content-type"] == "text/plain" and "server" not in served.headers
        head = await client.head(f"/.well-known/acme-challenge/{TOKEN}")
        assert head.status_code == 200 and head.content == b""
        for path in [
            "/.well-known/acme-challenge/" + "C" * 43,  # well-formed, unknown
            "/.well-known/acme-challenge/expired" + "B" * 30,  # expired
            "/.well-known/acme-challenge/",
            f"/.well-known/acme-challenge/{TOKEN}/more",
            "/.well-known/acme-challenge/short",
            "/.well-known/acme-challenge/" + "D" * 256,
            "/.well-known/acme-challenge/bad%20token%20but%20long%20enough",
            "/",
            "/acme/acme/directory",
            "/healthz",
            f"/.well-known/ACME-challenge/{TOKEN}",
        ]:
            answer = await client.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert TOKEN not in answer.text
        refused = await client.post(f"/.well-known/acme-challenge/{TOKEN}", content=b"x")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
        assert (await client.put("/other")).status_code == 404


async def test_a_token_of_bad_syntax_never_reaches_the_database(tmp_path: Path) -> None:
    """With a database that cannot answer, a well-formed token gets 503 (it was asked), a
    malformed one 404 at once (it was not)."""
    broken = Database(f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'none.db'}")
    server = await Responder(broken, Settings(state_dir=tmp_path, nats_url="")).started()
    try:
        async with httpx.AsyncClient(base_url=f"http://{server.address}", trust_env=False, timeout=10) as client:
            asked = await client.get(f"/.well-known/acme-challenge/{TOKEN}")
            assert asked.status_code == 503 and asked.headers["retry-after"] == "5"
            assert (await client.get("/.well-known/acme-challenge/not.base64url!token")).status_code == 404
    finally:
        await server.stop()
        await broken.dispose()


@pytest.mark.parametrize("kind", KINDS)
async def test_the_docs_redirect_of_each_server_reaches_the_responder(
    kind: str, tmp_path: Path, lone_responder: Responder, key_db: Database
) -> None:
    await store(key_db, TOKEN, f"{TOKEN}.thumbprint")
    responder = lone_responder
    server = RedirectHost(kind, tmp_path / kind, free_port(), responder.address)
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            path = f"/.well-known/acme-challenge/{TOKEN}"
            first = await client.get(server.url + path)
            assert first.status_code == 301, (first.status_code, first.text, server.logs())
            assert first.headers["location"] == f"http://{responder.address}{path}"
            followed = await client.get(server.url + path, follow_redirects=True)
            assert followed.status_code == 200 and followed.text == f"{TOKEN}.thumbprint"
            own = await client.get(server.url + "/index.html")
            assert own.status_code != 301 and "location" not in own.headers
            if kind != "apache":
                assert own.text.strip() == OWN_SITE
    finally:
        server.stop()


# The signer with Pebble validating through the host's redirect ------------------------------

def test_the_signer_refuses_a_token_the_responder_would_not_serve() -> None:
    upstream = Upstream(name="default", directory_url="https://ca.test/dir", authz_strategy="http-01")
    check_token("A" * 43, "www.example.test", upstream)
    for bad in ["short", "A" * 256, "dot." + "A" * 30, "../../etc/passwd" + "A" * 20, "A" * 30 + "%2F"]:
        with pytest.raises(UpstreamRejected) as refused:
            check_token(bad, "www.example.test", upstream)
        assert "an http-01 token for www.example.test that is not base64url" in refused.value.problem["detail"]


@pytest.mark.parametrize(
    "names",
    [["one.example.test"], ["a.example.test", "b.example.test", "127.0.0.1"]],
    ids=["one-name", "two-names-and-an-ip"],
)
async def test_http01_issues_through_the_hosts_redirect_and_leaves_no_row(
    pebble: Pebble, host: RedirectHost, settings: Settings, db: Database, names: list[str]
) -> None:
    served_before = upstream_http01.RESPONSES.labels("served")._value.get()
    valid = signer_metrics.UPSTREAM_VALIDATIONS.labels("default", "http-01", "valid")
    valid_before = valid._value.get()
    driver = make_acme_driver(http01_settings(settings, pebble), db)
    try:
        order_id = await new_order(db, names)
        msg = await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    order = await order_row(db, order_id)
    assert order.status == "valid", (order.error, pebble.log_path.read_text()[-2000:], host.logs())
    assert msg.acks == 1
    certificate = await certificate_of(db, order_id)
    assert certificate.chain_pem
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.orders_created == 1
    assert await key_authorization_rows(db) == 0
    # Pebble fetched each name's key authorization through the host, which redirected it.
    redirected = [line for line in host.access_log().splitlines() if "/.well-known/acme-challenge/" in line]
    assert len(redirected) >= len(names) and all(" 301 " in line for line in redirected), redirected
    assert upstream_http01.RESPONSES.labels("served")._value.get() - served_before >= len(names)
    assert valid._value.get() == valid_before + 1  # one validation: all the order's authorizations
    assert pebble.issued_count() == 1


async def test_a_wildcard_fails_naming_authz_strategy(pebble: Pebble, settings: Settings, db: Database) -> None:
    driver = make_acme_driver(http01_settings(settings, pebble), db)
    try:
        order_id = await new_order(db, ["wild.example.test", "*.wild.example.test"])
        msg = await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    assert msg.acks == 1
    order = await order_row(db, order_id)
    assert order.status == "invalid" and order.error is not None
    assert order.error["type"] == "rejectedIdentifier"
    detail = order.error["detail"]
    assert "wildcard *.wild.example.test only by dns-01" in detail, detail
    assert "ACME_RA_UPSTREAM_AUTHZ_STRATEGY=http-01" in detail and "authz_strategy dns-01" in detail
    assert await key_authorization_rows(db) == 0
    assert pebble.issued_count() == 0


async def test_a_failing_validation_fails_the_order_with_the_upstreams_text_and_leaves_no_row(
    tmp_path: Path, pebble: Pebble, settings: Settings, db: Database
) -> None:
    """The host redirects to where no responder listens: Pebble cannot fetch the key
    authorization, the order fails with what Pebble said, and the row is gone."""
    nowhere = RedirectHost("nginx", tmp_path / "nginx", pebble.http_port, f"127.0.0.1:{free_port()}")
    driver = make_acme_driver(http01_settings(settings, pebble), db)
    failed = signer_metrics.UPSTREAM_VALIDATIONS.labels("default", "http-01", "failed")
    failed_before = failed._value.get()
    seen: list[int] = []

    async def watch() -> None:  # the row exists while Pebble validates
        while True:
            seen.append(await key_authorization_rows(db))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        order_id = await new_order(db, ["unreachable.example.test"])
        msg = await run_job(IssueWorker(db, driver), order_id)
    finally:
        watcher.cancel()
        await driver.close()
        nowhere.stop()
    assert msg.acks == 1
    order = await order_row(db, order_id)
    assert order.status == "invalid" and order.error is not None
    detail = order.error["detail"]
    assert detail.startswith('upstream "default": did not validate unreachable.example.test:'), detail
    assert "connection refused" in detail.lower() or "connect" in detail.lower(), detail
    assert max(seen, default=0) == 1
    assert failed._value.get() == failed_before + 1
    assert await key_authorization_rows(db) == 0
    assert pebble.issued_count() == 0


async def test_signer_killed_mid_validation_completes_once_and_leaves_no_row(
    tmp_path: Path, pebble: Pebble, host: RedirectHost, db: Database, db_url: str, nats_url: str
) -> None:
    """SIGKILL of the signer process once its key authorization is stored (the upstream
    challenge is being answered over a slow link): the row stays (it was recorded before the
    POST); a new signer finishes: one upstream order, one certificate, no row left."""
    link = TcpProxy(pebble.port, delay=LINK_DELAY_SECONDS)
    env = signer_env(tmp_path, pebble, f"https://127.0.0.1:{link.port}/dir", nats_url, db_url)
    env["ACME_RA_UPSTREAM_AUTHZ_STRATEGY"] = "http-01"
    try:
        async with KilledMidIssuance(tmp_path, env, link, db, nats_url) as run:
            order_id = await run.issue(["killed.example.test"])

            async def stored() -> bool:
                return await key_authorization_rows(db) == 1

            await run.kill_when(stored)
            record = await upstream_order_row(db, order_id)
            assert record is not None and record.state == "pending", record
            assert await key_authorization_rows(db) == 1  # what the dead signer published stays...
            await run.resume()
            order = await order_row(db, order_id)
            assert order.status == "valid", (order.error, (tmp_path / "signer-2.log").read_text()[-3000:])
            record = await upstream_order_row(db, order_id)
            assert record is not None and record.orders_created == 1
            assert await certificate_count(db, order_id) == 1
            assert pebble.issued_count() == 1
            assert await key_authorization_rows(db) == 0  # ... until the next signer removes it
    finally:
        link.stop()


def test_a_bad_listen_value_is_one_line_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = base_environment() | {"ACME_RA_UPSTREAM_HTTP01_LISTEN": "port80", "ACME_RA_STATE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "acme_ra_frontend"], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "acme-ra: invalid configuration: ACME_RA_UPSTREAM_HTTP01_LISTEN='port80': expected host:port, got 'port80'"
    ]
    with socket.socket() as taken:  # a port that cannot be bound: one line too, exit status 1
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as stopped:
            upstream_http01.bind(f"127.0.0.1:{port}")
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"acme-ra: cannot listen on ACME_RA_UPSTREAM_HTTP01_LISTEN='127.0.0.1:{port}': Address already in use"
    )


# End to end: certbot, two frontend replicas, the host's nginx ---------------------------------

class FrontendReplica:
    """Another frontend process of a running topology (same database, NATS and TLS pair), on
    its own ACME port, with the upstream http-01 responder and two workers."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.http01_port, acme_port, metrics_port = free_port(), free_port(), free_port()
        env = env | {
            "ACME_RA_LISTEN": f"127.0.0.1:{acme_port}",
            "ACME_RA_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "ACME_RA_UPSTREAM_HTTP01_LISTEN": f"127.0.0.1:{self.http01_port}",
            "ACME_RA_FRONTEND_WORKERS": "2",
        }
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "acme_ra_frontend"], env=env, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    async def ready(self) -> None:
        """Its responder answers (404 for a path that is not a challenge)."""
        async def answers() -> bool:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
                    return (await client.get(f"http://127.0.0.1:{self.http01_port}/")).status_code == 404
            except httpx.HTTPError:
                return False

        await wait_until(answers, timeout=60, interval=0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def test_certbot_gets_a_certificate_proved_by_http01_through_a_redirect_to_another_replica(
    test_dns: TestDnsServer, tmp_path: Path
) -> None:
    """certbot orders through frontend replica A (no responder); the signer stores the upstream
    key authorizations; Pebble asks the host's nginx, which redirects (the doc's lines) to the
    responder of replica B, another frontend process on the same database."""
    require_pebble()
    bind = Bind(tmp_path / "bind", [Zone(TEST_ZONE)])
    pebble = Pebble(tmp_path / "pebble", dns_server=bind.resolver_address)
    names = [f"www.{TEST_ZONE}", f"api.{TEST_ZONE}"]
    try:
        strategy = {"ACME_RA_UPSTREAM_AUTHZ_STRATEGY": "http-01"}
        with topology_in_front_of(pebble, tmp_path / "lab", test_dns, strategy) as lab:
            env = lab.topology.service_env("frontend")
            assert not env.get("ACME_RA_UPSTREAM_HTTP01_LISTEN")  # replica A serves no key authorization
            replica_b = FrontendReplica(env, tmp_path / "frontend-b.log")
            host: RedirectHost | None = None
            try:
                await replica_b.ready()
                host = RedirectHost("nginx", tmp_path / "nginx", pebble.http_port,
                                    f"127.0.0.1:{replica_b.http01_port}")
                run = await asyncio.to_thread(certonly, lab, names, "http-01", tmp_path / "certbot",
                                              trust=tmp_path / "lab" / "frontend-tls" / "ca.pem")
                assert run.returncode == 0, run.describe() + "\n" + lab.logs()[-6000:] + host.logs()
                assert dns_names(run.chain()[0]) == set(names)
                assert pebble.issued_count() == 1
                log = replica_b.log.read_text()
                assert len([line for line in log.splitlines() if "key authorization served" in line]) >= len(names)
                redirected = [line for line in host.access_log().splitlines() if "/.well-known/acme-challenge/" in line]
                assert len(redirected) >= len(names) and all(" 301 " in line for line in redirected), redirected
                assert "upstream http-01 responder" not in (lab.topology.log_dir / "frontend.log").read_text()
                db = Database(lab.topology.settings.effective_database_url)
                try:
                    assert await key_authorization_rows(db) == 0
                finally:
                    await db.dispose()
            finally:
                if host is not None:
                    host.stop()
                replica_b.stop()
            # Replica B stopped cleanly, its responder with it (while NATS still ran).
            assert replica_b.process.returncode == 0, replica_b.log.read_text()[-3000:]
            assert '"level":"error"' not in replica_b.log.read_text(), replica_b.log.read_text()[-3000:]
    finally:
        pebble.stop()
        bind.stop()
