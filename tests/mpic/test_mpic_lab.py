"""`make lab` with three remote perspectives (acme_ra_tools.lab_perspectives): a certificate from
newOrder to download, its validation corroborated by all three ("3/3"), each perspective its own
process as the lab runs it, with its NATS user."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from acme_ra_tools.lab import ProcessLab
from acme_ra_tools.lab_infrastructure import LabPorts
from acme_ra_tools.supervisor import LaunchError, free_port
from tests.deploy.acme_load import ChallengeServer, issue, new_account
from tests.deploy.conftest import postgres_database, require_binaries
from tests.support.lab import base_environment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab_with_perspectives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessLab, ChallengeServer]]:
    require_binaries()
    port = free_port()
    with ChallengeServer(port) as challenges, postgres_database() as database_url:
        env = base_environment()
        env.update({
            "ACME_RA_STATE_DIR": str(tmp_path_factory.mktemp("mpic-lab") / "var"),
            "ACME_RA_DATABASE_URL": database_url,
            "ACME_RA_EXTERNAL_URL": f"https://localhost:{free_port()}",
            "ACME_RA_VALIDATION_HTTP_PORT": str(port),
        })
        lab = ProcessLab(env, frontends=1, validators=1, perspectives=3, ports=LabPorts(any_free=True),
                         ready_timeout=90)
        try:
            lab.start()
        except LaunchError as error:
            pytest.fail(f"the lab did not start: {error}", pytrace=False)
        try:
            yield lab, challenges
        finally:
            lab.stop()


async def _records(database_url: str) -> list[object]:
    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT validation_record FROM challenges WHERE status = 'valid'")
    finally:
        await connection.close()
    return [row[0] for row in rows]


def test_a_certificate_corroborated_by_three_perspectives(
    lab_with_perspectives: tuple[ProcessLab, ChallengeServer],
) -> None:
    lab, challenges = lab_with_perspectives
    assert {name for name in lab.services if name.startswith("perspective-")} == {
        "perspective-1", "perspective-2", "perspective-3"}
    assert lab.services["perspective-2"].env["ACME_RA_NATS_USER"] == "perspective"
    assert lab.services["validator-1"].env["ACME_RA_MPIC_REMOTE_PERSPECTIVES"] == "3"

    # The validator has heard all three (else it asks the two it knows: 2 of 3 suffice).
    deadline = time.monotonic() + 60
    while "acme_ra_mpic_live_perspectives 3.0" not in httpx.get(lab.metrics_urls()["validator-1"], trust_env=False).text:
        assert time.monotonic() < deadline, "the validator never heard three perspectives"
        time.sleep(0.5)

    async def one() -> None:
        context = ssl.create_default_context(cafile=str(lab.ca_bundle))
        async with httpx.AsyncClient(verify=context, trust_env=False, timeout=60) as http:
            client = await new_account(http, lab.directory_url)
            await issue(client, "mpic.lab.test", challenges)

    asyncio.run(one())
    records = asyncio.run(_records(lab.settings.effective_database_url))
    assert len(records) == 1 and isinstance(records[0], str)
    assert '"quorum": "3/3"' in records[0]
    for name in ("perspective-1", "perspective-2", "perspective-3"):
        assert name in records[0]
    assert "perspective-3" in lab.summary() or "3 remote network perspectives" in lab.summary()
