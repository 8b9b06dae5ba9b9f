"""A remote site behind a NATS leaf node, as docs/perspectives.md sets it up: the site's
nats-server connects to the hub's leaf node port as the ``perspective`` user; the site's
perspectives connect to it without credentials. Heartbeats and answers reach the primary;
nothing else the site publishes does."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from acme_ra import natsauth
from acme_ra_tools.supervisor import free_port, nats_server_binary

from .conftest import MpicLab, Web, wait_for_outcome
from .test_mpic_quorum import OUTCOME_TIMEOUT_SECONDS, _by_name, _validate

pytestmark = pytest.mark.integration


def site_config(lab: MpicLab) -> str:
    """The site's nats-server configuration (docs/perspectives.md, "A remote site")."""
    password = natsauth.password_file(lab.auth_dir, "perspective").read_text().strip()
    return ("leafnodes {\n"
            f'  remotes: [{{url: "nats-leaf://perspective:{password}@127.0.0.1:{lab.leaf_port}"}}]\n'
            "}\n")


async def test_perspectives_behind_a_leaf_node(mpic_lab: tuple[MpicLab, Web], tmp_path: Path) -> None:
    lab, web = mpic_lab
    config = tmp_path / "site.conf"
    config.write_text(site_config(lab))
    site_port = free_port()
    site = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the perspectives wait for it
        [str(nats_server_binary()), "-c", str(config), "-a", "127.0.0.1", "-p", str(site_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    site_url = f"nats://127.0.0.1:{site_port}"
    try:
        for name in ("s1", "s2", "s3", "primary"):
            lab.resolver(name)
        started = [lab.start_perspective(name, region, site_url)
                   for name, region in (("s1", "ripe"), ("s2", "ripe"), ("s3", "apnic"))]
        started.append(lab.start_primary(3))
        await asyncio.gather(*(process.ready() for process in started))
        await lab.processes["primary"].heard(3)
        # What the site publishes beyond heartbeats and answers stays in the site.
        seen: list[str] = []
        operator = await lab.operator()
        local = await nats.connect(site_url)
        try:
            async def record(message: Msg) -> None:
                seen.append(message.subject)

            await operator.subscribe("acme.jobs.>", cb=record)
            await operator.subscribe("acme.events.>", cb=record)
            await operator.flush()
            await local.publish("acme.jobs.issue", b"{}")
            await local.publish("acme.events.issued", b"{}")
            await local.flush()

            rows, db = await _validate(lab, web, "leaf.mpic.test", {"s1"})
            try:
                outcome = await wait_for_outcome(db, rows.challenge_id, OUTCOME_TIMEOUT_SECONDS)
            finally:
                await db.dispose()
        finally:
            await local.close()
            await operator.close()
        assert outcome["status"] == "valid", outcome
        record_ = outcome["record"]
        assert isinstance(record_, dict) and record_["quorum"] == "2/3"
        assert _by_name(record_)["s1"]["outcome"] == "invalid"
        assert "acme.jobs.issue" not in seen and "acme.events.issued" not in seen, seen
    finally:
        site.terminate()
        site.wait(10)

