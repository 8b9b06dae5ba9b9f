"""`make lab`'s process lab (acme_ra_tools.lab.ProcessLab): 2 frontends behind HAProxy, 3 validators,
the signer, Pebble upstream, challtestsrv DNS, PostgreSQL; every port free, state in tmp.

1. 60 certificates through the load balancer, each account's requests alternating between the
   frontends (so that every nonce is redeemed on the frontend that did not issue it): no
   badNonce, no failure, and every validator did some of the work.
2. Scaling: with a challenge server that answers after a delay, the same batch of validations
   finishes clearly faster with 3 validators than with 1.
3. A process that dies is restarted.
4. The admin API answers with a token the CLI made on the lab's database, and revokes a
   certificate through the signer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from acme_ra_tools.lab import ProcessLab
from acme_ra_tools.lab_infrastructure import DEFAULT_DATABASE_URL, LabPorts, ensure_postgres_database
from acme_ra_tools.supervisor import LaunchError, free_port
from tests.support.lab import base_environment

from .acme_load import (
    ChallengeServer,
    Traffic,
    answer,
    issue,
    new_account,
    order_challenge,
    validations_total,
    wait_valid,
)
from .conftest import FIGURES, ROOT, postgres_database, require_binaries

pytestmark = pytest.mark.integration

CERTIFICATES = 60
ACCOUNTS = 10  # each issues CERTIFICATES / ACCOUNTS certificates, one after the other
# Scaling: this many validations, each answered after SLOW_SECONDS by the challenge server.
SCALING_BATCH = 96
SLOW_SECONDS = 3.0
SCALING_MIN_RATIO = 1.6
LAB_ZONE = "lab.test"  # challtestsrv answers 127.0.0.1 for every name


@pytest.fixture(scope="module")
def http01_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def challenges(http01_port: int) -> Iterator[ChallengeServer]:
    with ChallengeServer(http01_port) as server:
        yield server


@pytest.fixture(scope="module")
def process_lab(tmp_path_factory: pytest.TempPathFactory, http01_port: int,
                challenges: ChallengeServer) -> Iterator[ProcessLab]:
    require_binaries()
    state_dir = tmp_path_factory.mktemp("lab") / "var"
    with postgres_database() as database_url:
        env = base_environment()
        env.update({
            "ACME_RA_STATE_DIR": str(state_dir),
            "ACME_RA_DATABASE_URL": database_url,
            "ACME_RA_EXTERNAL_URL": f"https://localhost:{free_port()}",
            "ACME_RA_VALIDATION_HTTP_PORT": str(http01_port),
        })
        lab = ProcessLab(env, frontends=2, validators=3, ports=LabPorts(any_free=True), ready_timeout=90)
        started = time.monotonic()
        try:
            lab.start()
        except LaunchError as error:
            pytest.fail(f"the lab did not start: {error}", pytrace=False)
        FIGURES["lab start seconds"] = round(time.monotonic() - started, 1)
        try:
            yield lab
        finally:
            lab.stop()


def ca_context(lab: ProcessLab) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(lab.ca_bundle))


def metrics(url: str) -> str:
    with httpx.Client(trust_env=False, timeout=5) as client:
        response = client.get(url)
        response.raise_for_status()
        return response.text


def validator_counts(lab: ProcessLab) -> dict[str, float]:
    urls = lab.metrics_urls()
    return {name: validations_total(metrics(urls[name])) for name in lab.validator_names()}


def test_sixty_certificates_through_the_load_balancer(process_lab: ProcessLab,
                                                      challenges: ChallengeServer) -> None:
    lab = process_lab
    before = validator_counts(lab)
    traffic = Traffic()
    failures: list[str] = []

    async def one_account(index: int) -> None:
        async with httpx.AsyncClient(verify=ca_context(lab), trust_env=False, timeout=30,
                                     event_hooks={"request": [traffic.alternate(index)],
                                                  "response": [traffic.hook(index)]}) as http:
            client = await new_account(http, lab.directory_url)
            for number in range(CERTIFICATES // ACCOUNTS):
                name = f"c{index}-{number}.{LAB_ZONE}"
                try:
                    await issue(client, name, challenges)
                except (AssertionError, httpx.HTTPError) as error:
                    failures.append(f"{name}: {error}")

    async def all_accounts() -> None:
        await asyncio.gather(*(one_account(index) for index in range(ACCOUNTS)))

    started = time.monotonic()
    asyncio.run(all_accounts())
    elapsed = time.monotonic() - started
    after = validator_counts(lab)
    done = {name: after[name] - before.get(name, 0) for name in after}
    FIGURES.update({
        "60 certificates: seconds": round(elapsed, 1),
        "60 certificates: failures": len(failures),
        "60 certificates: badNonce": traffic.bad_nonces,
        "60 certificates: problems": dict(traffic.problems),
        "60 certificates: validations per validator": done,
        "60 certificates: requests per frontend": dict(traffic.served_by),
        "60 certificates: consecutive requests on another frontend": round(traffic.alternation(), 2),
        "60 certificates: nonces redeemed on another frontend": f"{traffic.nonces_crossed}/{traffic.nonces_redeemed}",
    })
    print(json.dumps(FIGURES, indent=2))
    assert not failures, "\n".join(failures[:10])
    assert traffic.bad_nonces == 0
    assert set(traffic.served_by) == {"frontend-1", "frontend-2"}, traffic.served_by
    # Every client's requests alternate between the frontends, so every nonce it redeems was
    # issued by the other frontend.
    assert traffic.misrouted == 0
    assert traffic.alternation() == 1.0
    assert traffic.nonces_redeemed >= CERTIFICATES * 5 and traffic.nonces_crossed == traffic.nonces_redeemed
    assert sum(done.values()) == CERTIFICATES
    assert all(count > 0 for count in done.values()), f"a validator did nothing: {done}"


async def timed_batch(lab: ProcessLab, challenges: ChallengeServer, label: str) -> float:
    """SCALING_BATCH validations answered after SLOW_SECONDS each: the time from the first
    challenge POST to the last answer the challenge server sent."""
    async with httpx.AsyncClient(verify=ca_context(lab), trust_env=False, timeout=60) as http:
        clients = await asyncio.gather(*(new_account(http, lab.directory_url) for _ in range(8)))

        async def prepare(first: int) -> list[tuple[int, tuple[str, str, str]]]:
            client = clients[first]
            return [(i, await order_challenge(client, f"{label}-{i}.{LAB_ZONE}", challenges))
                    for i in range(first, SCALING_BATCH, len(clients))]

        batches = await asyncio.gather(*(prepare(first) for first in range(len(clients))))
        prepared = [urls for _, urls in sorted(item for batch in batches for item in batch)]
        assert len(prepared) == SCALING_BATCH
        challenges.served.clear()
        challenges.delay = SLOW_SECONDS
        try:
            started = time.monotonic()

            # Every challenge at once, as many clients would: a challenge POST may wait up to
            # ACME_RA_ANSWER_WAIT_SECONDS for its validation, so a few clients posting in turn
            # would measure that wait, not the validators.
            async def post(i: int) -> None:
                await answer(clients[i % len(clients)], prepared[i][2])

            await asyncio.gather(*(post(i) for i in range(SCALING_BATCH)))
            deadline = time.monotonic() + 120
            while len(challenges.served) < SCALING_BATCH:
                assert time.monotonic() < deadline, f"{len(challenges.served)}/{SCALING_BATCH} validated"
                await asyncio.sleep(0.1)
            elapsed = max(challenges.served.values()) - started
        finally:
            challenges.delay = 0
        for i, (_, authz_url, _) in enumerate(prepared):
            await wait_valid(clients[i % len(clients)], authz_url)
        return elapsed


def test_three_validators_finish_a_slow_batch_faster_than_one(process_lab: ProcessLab,
                                                              challenges: ChallengeServer) -> None:
    lab = process_lab
    lab.scale_validators(1)
    assert lab.validator_names() == ["validator-1"]
    one = asyncio.run(timed_batch(lab, challenges, "one"))
    lab.scale_validators(3)
    assert lab.validator_names() == ["validator-1", "validator-2", "validator-3"]
    before = validator_counts(lab)
    three = asyncio.run(timed_batch(lab, challenges, "three"))
    after = validator_counts(lab)
    ratio = one / three
    FIGURES.update({
        "scaling: batch": f"{SCALING_BATCH} validations, each answered after {SLOW_SECONDS}s",
        "scaling: 1 validator seconds": round(one, 2),
        "scaling: 3 validators seconds": round(three, 2),
        "scaling: ratio": round(ratio, 2),
        "scaling: validations per validator (3)": {n: after[n] - before.get(n, 0) for n in after},
    })
    print(json.dumps(FIGURES, indent=2))
    assert ratio >= SCALING_MIN_RATIO, f"1 validator {one:.1f}s, 3 validators {three:.1f}s: ratio {ratio:.2f}"


def test_a_process_that_dies_is_restarted(process_lab: ProcessLab) -> None:
    lab = process_lab
    service = lab.services["validator-2"]
    assert service.child is not None
    old_pid = service.child.process.pid
    restarts = service.restarts
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        child = lab.services["validator-2"].child
        if service.restarts > restarts and child is not None and child.process.pid != old_pid:
            try:
                metrics(lab.metrics_urls()["validator-2"].replace("/metrics", "/readyz"))
                break
            except httpx.HTTPError:
                pass
        assert time.monotonic() < deadline, "validator-2 was not restarted"
        time.sleep(0.2)
    log = Path(lab.log_dir / "validator-2.log").read_text(errors="replace")
    assert log.count("Uvicorn running") >= 2


def nats_exchange(url: str, credentials: dict[str, str], commands: bytes = b"") -> bytes:
    """CONNECT to the lab's nats-server with ``credentials`` (raw protocol), send ``commands``
    and a PING; what the server answered up to its PONG (or its closing the connection)."""
    host_port = url.split("://", 1)[1].split(",")[0]
    host, _, port = host_port.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        stream = sock.makefile("rwb")
        assert stream.readline().startswith(b"INFO ")
        connect = {"verbose": False, "pedantic": False, **credentials}
        stream.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\n" + commands + b"PING\r\n")
        stream.flush()
        answer = b""
        while not answer.endswith(b"PONG\r\n"):
            line = stream.readline()
            if not line:
                break
            answer += line
        return answer


def test_the_lab_nats_wants_each_services_user(process_lab: ProcessLab) -> None:
    """No credentials, no bus; the validator's user cannot publish an issue job, a revocation or
    the signer's event (docs/security.md, "Bus permissions")."""
    lab = process_lab
    assert lab.nats_auth_dir is not None
    assert b"Authorization Violation" in nats_exchange(lab.settings.nats_url, {})
    password = (lab.nats_auth_dir / "validator.password").read_text().strip()
    commands = b"".join(b"PUB %s 2\r\n{}\r\n" % subject for subject in
                        (b"acme.jobs.issue", b"acme.rpc.revoke", b"acme.events.issued", b"acme.events.validated"))
    answer = nats_exchange(lab.settings.nats_url, {"user": "validator", "pass": password}, commands)
    for subject in ("acme.jobs.issue", "acme.rpc.revoke", "acme.events.issued"):
        assert f'Permissions Violation for Publish to "{subject}"'.encode() in answer, answer
    assert b'"acme.events.validated"' not in answer and answer.endswith(b"PONG\r\n"), answer


def test_the_image_healthcheck_against_the_lab_processes(process_lab: ProcessLab) -> None:
    """deploy/docker/healthcheck.py, as the image runs it, against real services."""
    lab = process_lab
    script = ROOT / "deploy" / "docker" / "healthcheck.py"
    listeners = {
        "frontend": ("ACME_RA_LISTEN", lab.services["frontend-1"].env["ACME_RA_LISTEN"]),
        "validator": ("ACME_RA_VALIDATOR_LISTEN", lab.services["validator-1"].env["ACME_RA_VALIDATOR_LISTEN"]),
        "signer": ("ACME_RA_SIGNER_LISTEN", lab.settings.signer_listen),
        "admin": ("ACME_RA_ADMIN_LISTEN", lab.settings.admin_listen),
    }
    for service, (variable, listen) in listeners.items():
        env = dict(base_environment(), **{variable: listen})
        result = subprocess.run([sys.executable, str(script), service], env=env, capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode == 0, (service, result.stderr)
        env[variable] = f"127.0.0.1:{free_port()}"  # nobody there
        result = subprocess.run([sys.executable, str(script), service], env=env, capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode == 1, service


@pytest.fixture(scope="module")
def admin_token(process_lab: ProcessLab, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A token from the command the lab prints, run in the shell that started the lab (which
    set ACME_RA_DATABASE_URL: the lab's database is not the default one)."""
    command = process_lab.admin_token_command()
    assert "admin-token create" in command
    env = dict(base_environment(), ACME_RA_DATABASE_URL=process_lab.env["ACME_RA_DATABASE_URL"])
    created = subprocess.run(["bash", "-c", f"{command} --json"], env=env, cwd=tmp_path_factory.mktemp("operator"),
                             capture_output=True, text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["token"])


def test_the_admin_token_command_names_the_lab_database(tmp_path: Path) -> None:
    """Without ACME_RA_DATABASE_URL the lab uses its own database, which a bare ``acme-ra``
    would not (it defaults to SQLite): the printed command names it."""
    env = dict(base_environment(), ACME_RA_STATE_DIR=str(tmp_path / "var"))
    command = ProcessLab(env).admin_token_command()
    assert command.startswith(f"ACME_RA_DATABASE_URL={DEFAULT_DATABASE_URL} ")
    assert command.endswith("acme-ra admin-token create --label me")
    mine = "postgresql+asyncpg://postgres@127.0.0.1:5432/mine"
    assert "DATABASE_URL" not in ProcessLab(dict(env, ACME_RA_DATABASE_URL=mine)).admin_token_command()


def admin_client(lab: ProcessLab, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=lab.admin_url, headers=headers, trust_env=False, timeout=60)


def test_the_admin_api_of_the_lab(process_lab: ProcessLab, admin_token: str) -> None:
    """The admin service the lab started, as make dev prints it: the API with a token the CLI
    made (401 without one), the signer's status (HTTP) and the JetStream backlog (NATS)."""
    lab = process_lab
    assert lab.admin_url == f"http://{lab.settings.admin_listen}"
    assert f"admin console    {lab.admin_url}/" in lab.summary()
    with admin_client(lab, None) as anonymous:
        assert anonymous.get("/api/eab-keys").status_code == 401
    with admin_client(lab, admin_token) as admin:
        assert admin.get("/api/eab-keys").status_code == 200
        upstream = admin.get("/api/upstream").json()
        assert upstream["signer"]["ready"] is True and upstream["upstream"] == "acme", upstream
        queues = admin.get("/api/queues").json()
        assert queues["reachable"] is True and {c["name"] for c in queues["consumers"]} == {"validator", "signer"}


def test_the_admin_revokes_through_the_signer(process_lab: ProcessLab, admin_token: str,
                                              challenges: ChallengeServer) -> None:
    """A certificate issued through the load balancer, revoked with the admin API: the signer
    (over NATS) revokes it at Pebble."""
    lab = process_lab

    async def issue_one() -> str:
        async with httpx.AsyncClient(verify=ca_context(lab), trust_env=False, timeout=30) as http:
            client = await new_account(http, lab.directory_url)
            leaf = await issue(client, f"admin.{LAB_ZONE}", challenges)
        return format(leaf.serial_number, "x")

    serial = asyncio.run(issue_one())
    with admin_client(lab, admin_token) as admin:
        revoked = admin.post(f"/api/certificates/{serial}/revoke", json={"reason": "superseded"})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["certificate"]["status"] == "revoked"
        assert revoked.json()["certificate"]["revocation_reason"] == 4
        assert admin.post(f"/api/certificates/{serial}/revoke", json={"reason": 4}).status_code == 409


def test_something_else_on_the_pebble_port_is_refused_clearly(tmp_path: Path) -> None:
    require_binaries()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = dict(base_environment(), ACME_RA_STATE_DIR=str(tmp_path / "var"),
                   ACME_RA_EXTERNAL_URL=f"https://localhost:{free_port()}")
        lab = ProcessLab(env, ports=LabPorts({"pebble": port}, any_free=True), ready_timeout=30)
        with pytest.raises(LaunchError, match="ACME_RA_UPSTREAM_CA_BUNDLE"):
            lab.start()
    assert not lab.services


def test_the_lab_database_is_created_and_recreated() -> None:
    """`make lab` creates its database, and creates it anew for a new sealing secret."""
    with postgres_database() as url:
        parsed = make_url(url)
        missing = parsed.set(database=f"{parsed.database}_new").render_as_string(hide_password=False)
        admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        try:
            assert ensure_postgres_database(missing) is False  # created
            assert ensure_postgres_database(missing) is True  # kept
            table = parsed.set(drivername="postgresql", database=f"{parsed.database}_new")
            asyncio.run(_sql(table.render_as_string(hide_password=False), "CREATE TABLE sealed (x int)"))
            assert ensure_postgres_database(missing, recreate=True) is True
            assert asyncio.run(_sql(table.render_as_string(hide_password=False),
                                    "SELECT to_regclass('sealed') IS NULL")) is True
        finally:
            asyncio.run(_sql(admin, f'DROP DATABASE IF EXISTS "{parsed.database}_new" WITH (FORCE)'))


async def _sql(url: str, statement: str) -> object:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


def test_the_prometheus_configuration_of_the_lab(process_lab: ProcessLab) -> None:
    """STATE_DIR/lab/prometheus.yml: the compose lab's jobs, every /metrics of the lab, the alerts."""
    import yaml

    config = yaml.safe_load((process_lab.lab_dir / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert set(jobs) == {"frontend", "validator", "signer", "haproxy"}
    assert len(jobs["frontend"]) == 2 and len(jobs["validator"]) == len(process_lab.validator_names())
    for targets in jobs.values():
        for target in targets:
            assert metrics(f"http://{target}/metrics")
    assert config["rule_files"] == [str(ROOT / "deploy" / "prometheus" / "alerts.yml")]
