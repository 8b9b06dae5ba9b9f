"""The signer *process* killed (SIGKILL) mid-issuance, after the upstream order was created,
then a new signer process finishes the job: exactly one certificate, in the database and at
Pebble. Real processes: nats-server, Pebble behind a slow link, two signer processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Self

import pytest
from sqlalchemy import update

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra.db.models import UpstreamOrder, utcnow
from acme_ra_tools.supervisor import free_port
from tests.support.tcp_proxy import TcpProxy

from .conftest import SECRET, certificate_count, new_order, order_row, upstream_order_row, wait_until
from .pebble import Pebble

REPO = Path(__file__).resolve().parents[2]
# Added to every chunk between the signer and Pebble: the whole issuance then takes seconds.
LINK_DELAY_SECONDS = 0.12


class SignerProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "acme_ra_signer"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def slow_link(pebble: Pebble) -> Iterator[TcpProxy]:
    proxy = TcpProxy(pebble.port, delay=LINK_DELAY_SECONDS)
    try:
        yield proxy
    finally:
        proxy.stop()


def signer_env(tmp_path: Path, pebble: Pebble, directory_url: str, nats_url: str, db_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ACME_RA_")}
    env.update(
        ACME_RA_STATE_DIR=str(tmp_path / "var"),
        ACME_RA_DATABASE_URL=db_url,
        ACME_RA_NATS_URL=nats_url,
        ACME_RA_SIGNER_LISTEN=f"127.0.0.1:{free_port()}",
        ACME_RA_UPSTREAM="acme",
        ACME_RA_UPSTREAM_DIRECTORY_URL=directory_url,
        ACME_RA_UPSTREAM_EAB_KID=pebble.eab_kid,
        ACME_RA_UPSTREAM_EAB_HMAC_KEY=pebble.eab_hmac_key,
        ACME_RA_UPSTREAM_CA_BUNDLE=str(pebble.ca_bundle),
        ACME_RA_SECRET_KEY=SECRET,
    )
    return env


class KilledMidIssuance:
    """The scenario of the signer-killed tests: a first signer process takes the issue job of a new
    order, is SIGKILLed at a moment the test chooses, and a second one (the dead one's lease run
    out, the link to the upstream fast again) finishes the re-published job."""

    def __init__(self, tmp_path: Path, env: dict[str, str], link: TcpProxy, db: Database, nats_url: str) -> None:
        self.tmp_path, self.env, self.link, self.db, self.nats_url = tmp_path, env, link, db, nats_url
        self.first: SignerProcess | None = None
        self.second: SignerProcess | None = None
        self.order_id = ""

    async def __aenter__(self) -> Self:
        self.nc = await bus.connect(self.nats_url, "test")
        self.first = SignerProcess(self.env, self.tmp_path / "signer-1.log")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.nc.close()
        if self.first is not None:
            self.first.kill()
        if self.second is not None:
            self.second.stop()

    async def issue(self, names: list[str]) -> str:
        """A new order for ``names``, its issue job published once the signer created the streams."""
        self.order_id = await new_order(self.db, names)

        async def js_ready() -> bool:
            try:
                await self.nc.jetstream().stream_info(bus.JOBS_STREAM)
                return True
            except Exception:  # noqa: BLE001 - not created yet
                return False

        await wait_until(js_ready, timeout=30)
        await bus.publish_job(self.nc.jetstream(), bus.SUBJECT_ISSUE, bus.IssueJob(order_id=self.order_id),
                              f"issue-{self.order_id}")
        return self.order_id

    async def kill_when(self, moment: Callable[[], Awaitable[bool]]) -> None:
        await wait_until(moment, timeout=60, interval=0.01)
        assert self.first is not None
        self.first.kill()

    async def resume(self) -> None:
        """The job comes back (re-published here as the reconciler does; JetStream itself
        redelivers after its ack wait) to a new signer once the dead one's lease ran out (30 s in
        production; expiry itself is tested in test_upstream_never_twice); returns when the order
        is settled."""
        async with self.db.transaction() as session:
            await session.execute(
                update(UpstreamOrder)
                .where(UpstreamOrder.order_id == self.order_id)
                .values(lease_until=utcnow() - dt.timedelta(seconds=1))
            )
        self.link.delay = 0.0  # the same upstream URL (the account and order URLs depend on it), now fast
        self.second = SignerProcess(self.env, self.tmp_path / "signer-2.log")
        await bus.publish_job(self.nc.jetstream(), bus.SUBJECT_ISSUE, bus.IssueJob(order_id=self.order_id),
                              f"issue-{self.order_id}-again")

        async def settled() -> bool:
            return (await order_row(self.db, self.order_id)).status in ("valid", "invalid")

        await wait_until(settled, timeout=60)


async def test_signer_killed_after_the_upstream_order_was_created(
    tmp_path: Path, pebble: Pebble, slow_link: TcpProxy, db: Database, db_url: str, nats_url: str
) -> None:
    slow_url = f"https://127.0.0.1:{slow_link.port}/dir"
    env = signer_env(tmp_path, pebble, slow_url, nats_url, db_url)
    async with KilledMidIssuance(tmp_path, env, slow_link, db, nats_url) as run:
        order_id = await run.issue(["killed.example.test", "www.killed.example.test"])

        async def upstream_order_created() -> bool:
            record = await upstream_order_row(db, order_id)
            return record is not None and record.url is not None

        await run.kill_when(upstream_order_created)
        killed_in = (await upstream_order_row(db, order_id)).state  # type: ignore[union-attr]
        assert killed_in in ("pending", "finalizing", "processing"), killed_in
        assert (await order_row(db, order_id)).status == "processing"
        await run.resume()
        assert (await order_row(db, order_id)).status == "valid"
        assert await certificate_count(db, order_id) == 1
        record = await upstream_order_row(db, order_id)
        assert record is not None and record.orders_created == 1
        await asyncio.sleep(0.5)  # anything still in flight would have issued by now
        assert pebble.issued_count() == 1
