"""The topology ``make dev`` runs (acme_ra_tools.dev.Topology), on free ports in a temp dir."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from acme_ra.config import ENV_PREFIX, Settings
from acme_ra_tools.dev import Topology
from acme_ra_tools.supervisor import LaunchError, free_port
from tests.support import database
from tests.support.dns_server import TestDnsServer

# Where the test DNS server's names resolve, and the zone it answers for.
TEST_ZONE = "acme-ra.test"


@dataclass(frozen=True)
class LabPorts:
    frontend: int
    validator: int
    signer: int
    nats: int
    http01: int  # ACME_RA_VALIDATION_HTTP_PORT: where certbot --standalone answers
    tls_alpn: int

    @classmethod
    def allocate(cls) -> LabPorts:
        ports: set[int] = set()
        while len(ports) < 6:
            ports.add(free_port())
        return cls(*sorted(ports))


def base_environment() -> dict[str, str]:
    """This process's environment without any ACME_RA_* variable: tests say what they mean."""
    return {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}


def lab_environment(state_dir: Path, database_url: str, ports: LabPorts,
                    dns_resolvers: str = "") -> dict[str, str]:
    """The children's environment: every port free, state and database private to the test."""
    env = base_environment()
    env.update({
        f"{ENV_PREFIX}STATE_DIR": str(state_dir),
        f"{ENV_PREFIX}DATABASE_URL": database_url,
        f"{ENV_PREFIX}LISTEN": f"127.0.0.1:{ports.frontend}",
        f"{ENV_PREFIX}EXTERNAL_URL": f"https://localhost:{ports.frontend}",
        f"{ENV_PREFIX}VALIDATOR_LISTEN": f"127.0.0.1:{ports.validator}",
        f"{ENV_PREFIX}SIGNER_LISTEN": f"127.0.0.1:{ports.signer}",
        f"{ENV_PREFIX}VALIDATION_HTTP_PORT": str(ports.http01),
        f"{ENV_PREFIX}VALIDATION_TLS_PORT": str(ports.tls_alpn),
        f"{ENV_PREFIX}DNS_RESOLVERS": dns_resolvers,
        # Every client of the suite's shared lab comes from 127.0.0.1: production's 20 new
        # accounts an hour per address would refuse the 21st test (the limit has tests of its own).
        f"{ENV_PREFIX}RATE_NEW_ACCOUNTS_PER_IP_PER_HOUR": "1000",
    })
    taken = set(vars(ports).values())
    # Off unless a test asks for it: the upstream http-01 responder is not a service of its own.
    off = {"upstream_http01_listen"}
    for field in Settings.model_fields:  # any other listener (metrics, admin...): a free port too
        name = f"{ENV_PREFIX}{field.upper()}"
        if field.endswith("_listen") and field not in off and name not in env:
            port = free_port()
            while port in taken:  # free now, but already promised to another service
                port = free_port()
            taken.add(port)
            env[name] = f"127.0.0.1:{port}"
    return env


@dataclass
class Lab:
    """A running topology and what tests need to use it."""

    topology: Topology
    ports: LabPorts
    txt_dir: Path  # the test DNS server's TXT records (the certbot hooks write here)

    @property
    def directory_url(self) -> str:
        return self.topology.directory_url

    @property
    def ca_bundle(self) -> Path:
        return self.topology.ca_bundle

    @property
    def state_dir(self) -> Path:
        return self.topology.state_dir

    def logs(self) -> str:
        """Every child's log, for a failing test's message."""
        parts = []
        for path in sorted(self.topology.log_dir.glob("*.log")):
            parts.append(f"----- {path.name}\n{path.read_text(errors='replace')[-20000:]}")
        return "\n".join(parts)


@contextmanager
def started_trusting(topology: Topology, trust: Path, what: str = "the topology") -> Iterator[Topology]:
    """``topology`` started, its launcher trusting ``trust`` (it checks the frontend's own TLS
    pair against those roots), and stopped on the way out; a failed start fails the test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(trust))
        patch.delenv("SSL_CERT_DIR", raising=False)
        try:
            topology.start()
        except LaunchError as error:
            pytest.fail(f"{what} did not start: {error}", pytrace=False)
    try:
        yield topology
    finally:
        topology.stop()


@contextmanager
def running_tls_lab(workdir: Path, test_dns: TestDnsServer, extra_env: Mapping[str, str]) -> Iterator[tuple[Lab, Path]]:
    """A topology on a fresh database of the lane's kind whose frontend serves a TLS pair of the
    test's own (``ACME_RA_TLS_CERT_FILE``), ``extra_env`` on top; yields it and the pair's root
    (what clients must trust). With no pair and an ACME upstream, ``ca-bundle.pem`` holds only the
    upstream's intermediate, which OpenSSL-based clients and the launcher's readiness check cannot
    use as a trust anchor (docs/conformance.md, "Interop")."""
    from tests.upstream.pebble import make_tls_material

    trust, cert, key = make_tls_material(workdir / "frontend-tls")
    ports = LabPorts.allocate()
    with database.fresh_database(workdir / "db") as database_url:
        env = lab_environment(workdir / "var", database_url, ports, dns_resolvers=test_dns.resolver_setting)
        env.update({"ACME_RA_TLS_CERT_FILE": str(cert), "ACME_RA_TLS_KEY_FILE": str(key), **extra_env})
        with started_trusting(Topology(env, nats_port=ports.nats), trust) as topology:
            yield Lab(topology, ports, test_dns.txt_dir), trust


@contextmanager
def running_lab(state_dir: Path, database_url: str, dns_resolvers: str, txt_dir: Path,
                extra_env: Mapping[str, str] | None = None) -> Iterator[Lab]:
    """nats-server, migrations, bootstrap and the services, started by the launcher's code with
    ``extra_env`` on top of the lab's environment; stopped afterwards."""
    ports = LabPorts.allocate()
    env = lab_environment(state_dir, database_url, ports, dns_resolvers=dns_resolvers)
    env.update(extra_env or {})
    topology = Topology(env, nats_port=ports.nats)
    try:
        topology.start()
    except LaunchError as error:
        pytest.fail(f"the topology did not start: {error}", pytrace=False)
    try:
        yield Lab(topology, ports, txt_dir)
    finally:
        topology.stop()
