"""Fixtures of the observability tests: the three services as ``make dev`` starts them, with
tracing sent to an OTLP/HTTP receiver of the tests' own, and certbot runs through them.

Two topologies: ``traced_lab`` signs with the lab CA; ``traced_pebble`` has a real Pebble as its
upstream (the acme driver with External Account Binding) and requires EAB from its own clients,
with a key from ``acme-ra eab create``. Pebble missing is a failure with the install line.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from acme_ra.config import ENV_PREFIX
from acme_ra_tools.dev import Topology
from acme_ra_tools.supervisor import LaunchError
from tests.support import certbot, database
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, Lab, LabPorts, lab_environment
from tests.upstream.pebble import Pebble, make_tls_material

from .otlp import OtlpReceiver

# What the services export with: the standard variables, as an operator sets them.
OTEL_BATCH_DELAY_MS = 200


@dataclass
class TracedLab:
    """A running topology, its trace receiver, and what the tests did through it."""

    lab: Lab
    otlp: OtlpReceiver
    env: dict[str, str]
    pebble: Pebble | None = None
    eab: dict[str, str] = field(default_factory=dict)  # kid, hmac_key from `acme-ra eab create`
    issued: list[Issued] = field(default_factory=list)
    revoked: list[Issued] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return self.lab.topology.log_dir

    def service_logs(self) -> dict[str, str]:
        return {path.stem: path.read_text(errors="replace") for path in sorted(self.log_dir.glob("*.log"))}

    @property
    def metrics_urls(self) -> dict[str, str]:
        settings = self.lab.topology.settings
        return {
            "frontend": f"http://{settings.metrics_listen}/metrics",
            "validator": f"http://{settings.validator_listen}/metrics",
            "signer": f"http://{settings.signer_listen}/metrics",
        }


@dataclass
class Issued:
    name: str
    cert_name: str
    serial: str  # lowercase hex
    pem: str  # the leaf


def otel_environment(otlp: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": str(OTEL_BATCH_DELAY_MS),
    }


def start_topology(root: Path, test_dns: TestDnsServer, database_url: str, otlp: OtlpReceiver,
                   extra: dict[str, str], own_tls: bool = False) -> Lab:
    """The three services on free ports. ``own_tls``: the frontend's TLS certificate comes from a
    throw-away CA of the test's (an acme upstream would otherwise issue it, and Pebble's chain
    ends in an intermediate that Python's TLS will not take as a trust anchor)."""
    ports = LabPorts.allocate()
    state_dir = root / "var"
    env = lab_environment(state_dir, database_url, ports, dns_resolvers=test_dns.resolver_setting)
    env = {key: value for key, value in env.items() if not key.startswith("OTEL_")}
    env.update(otel_environment(otlp))
    env[f"{ENV_PREFIX}CAA_IDENTITIES"] = "ca.example"  # the CAA check runs (and shows in the trace)
    env.update(extra)
    with pytest.MonkeyPatch.context() as patch:
        if own_tls:
            ca, cert, key = make_tls_material(root / "frontend-tls")
            env[f"{ENV_PREFIX}TLS_CERT_FILE"], env[f"{ENV_PREFIX}TLS_KEY_FILE"] = str(cert), str(key)
            state_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(ca, state_dir / "ca-bundle.pem")  # what the clients trust (Lab.ca_bundle)
            patch.setenv("SSL_CERT_FILE", str(ca))  # the launcher's readiness check trusts it too
        topology = Topology(env, nats_port=ports.nats)
        try:
            topology.start()
        except LaunchError as error:
            pytest.fail(f"the topology did not start: {error}", pytrace=False)
    return Lab(topology, ports, test_dns.txt_dir)


def acme_ra(args: list[str], env: dict[str, str]) -> str:
    """``acme-ra ARGS`` as an operator runs it; its standard output."""
    done = subprocess.run([sys.executable, "-m", "acme_ra_tools.cli", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"acme-ra {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def run_certbot(traced: TracedLab, args: list[str], workdir: Path) -> str:
    """certbot with the lab's trust and one account per topology (``workdir``); its output."""
    command = [
        str(certbot.CERTBOT), *args, "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
        "--server", traced.lab.directory_url,
        "--config-dir", str(workdir / "config"), "--work-dir", str(workdir / "work"),
        "--logs-dir", str(workdir / "logs"),
    ]
    if traced.eab:
        command += ["--eab-kid", traced.eab["kid"], "--eab-hmac-key", traced.eab["hmac_key"]]
    done = subprocess.run(command, env=certbot.trust_environment(traced.lab.ca_bundle), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=certbot.CERTBOT_TIMEOUT_SECONDS, check=False)
    assert done.returncode == 0, \
        f"certbot {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{traced.lab.logs()}"
    return done.stdout


def issue(traced: TracedLab, label: str, workdir: Path) -> Issued:
    """One certificate for ``<label>.acme-ra.test`` (http-01, certbot standalone)."""
    name = f"{label}.{TEST_ZONE}"
    run_certbot(traced, ["certonly", "--standalone", "--http-01-port", str(traced.lab.ports.http01),
                         "-d", name, "--cert-name", label], workdir)
    pem = (workdir / "config" / "live" / label / "cert.pem").read_text()
    serial = format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")
    issued = Issued(name, label, serial, pem)
    traced.issued.append(issued)
    return issued


def revoke(traced: TracedLab, issued: Issued, workdir: Path) -> None:
    run_certbot(traced, ["revoke", "--cert-name", issued.cert_name, "--reason", "superseded",
                         "--no-delete-after-revoke"], workdir)
    traced.revoked.append(issued)


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def traced_lab(test_dns: TestDnsServer, otlp: OtlpReceiver,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedLab]:
    """The lab CA upstream; one certificate issued."""
    root = tmp_path_factory.mktemp("traced-lab")
    with database.fresh_database(root / "db") as url:
        lab = start_topology(root, test_dns, url, otlp, {})
        try:
            traced = TracedLab(lab, otlp, dict(lab.topology.child_env))
            issue(traced, "lab-trace", root / "certbot")
            yield traced
        finally:
            lab.topology.stop()


@pytest.fixture(scope="session")
def traced_pebble(test_dns: TestDnsServer, otlp: OtlpReceiver,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedLab]:
    """Pebble upstream with EAB, EAB required of clients; three certificates issued with an
    EAB-bound certbot account, the first one revoked."""
    root = tmp_path_factory.mktemp("traced-pebble")
    pebble = Pebble(root / "pebble")
    try:
        with database.fresh_database(root / "db") as url:
            lab = start_topology(root, test_dns, url, otlp, {
                f"{ENV_PREFIX}UPSTREAM": "acme",
                f"{ENV_PREFIX}UPSTREAM_DIRECTORY_URL": pebble.directory_url,
                f"{ENV_PREFIX}UPSTREAM_EAB_KID": pebble.eab_kid,
                f"{ENV_PREFIX}UPSTREAM_EAB_HMAC_KEY": pebble.eab_hmac_key,
                f"{ENV_PREFIX}UPSTREAM_CA_BUNDLE": str(pebble.ca_bundle),
                f"{ENV_PREFIX}SECRET_KEY": secrets.token_urlsafe(32),
                f"{ENV_PREFIX}EAB_REQUIRED": "true",
            }, own_tls=True)
            try:
                env = dict(lab.topology.child_env)
                traced = TracedLab(lab, otlp, env, pebble=pebble)
                traced.eab = json.loads(acme_ra(["eab", "create", "--label", "observability", "--json"], env))
                workdir = root / "certbot"
                first = issue(traced, "pebble-trace", workdir)
                issue(traced, "pebble-two", workdir)
                issue(traced, "pebble-three", workdir)
                revoke(traced, first, workdir)
                yield traced
            finally:
                lab.topology.stop()
    finally:
        pebble.stop()
