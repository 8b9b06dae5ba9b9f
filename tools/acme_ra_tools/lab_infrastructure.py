"""What ``make lab`` (:mod:`acme_ra_tools.lab`) runs around acme-ra, and where everything listens.

- :class:`LabPorts`: each process's port, the usual one (:data:`DEFAULT_PORTS`, :data:`PORT_BASES`)
  or, for tests, any free one;
- this machine's PostgreSQL: :func:`ensure_postgres_database` creates the lab's database
  (:data:`DEFAULT_DATABASE_URL`);
- the servers the lab starts unless something listens on their ports already (:data:`SHARED_PORTS`):
  nats-server (:func:`nats_service`), pebble-challtestsrv as the lab's DNS
  (:func:`challtestsrv_service`) and Pebble as the upstream CA (:func:`pebble_service`, EAB
  :data:`PEBBLE_EAB_KID`), both from Debian's ``pebble`` package (:data:`INSTALL_HINT`);
- HAProxy with deploy/haproxy/haproxy.cfg, docker-compose's load balancer (:func:`haproxy_service`);
- a Prometheus configuration for every /metrics of the lab (:func:`write_prometheus_config`).

Each ``*_service`` function says how to run a server; :class:`~acme_ra_tools.lab.ProcessLab`
starts it and keeps it running.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url

from acme_ra_tools import lab_perspectives
from acme_ra_tools.lab_tls import TlsMaterial
from acme_ra_tools.service_group import Service
from acme_ra_tools.supervisor import (
    LaunchError,
    NotReady,
    free_port,
    http_ok,
    nats_ready,
    nats_server_binary,
    port_is_free,
    tcp_listening,
)

# ACME_RA_DATABASE_URL when unset: a database of this machine's PostgreSQL (created if missing).
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/acme_ra_lab"
# The EAB pair of Pebble's example configuration (pebble-config-external-account-bindings.json):
# public test values, the same in docker-compose.yml.
PEBBLE_EAB_KID = "kid-1"
PEBBLE_EAB_HMAC_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
# The usual ports. frontend-N listens on 8443+N (metrics 9130+N), validator-N on 9140+N.
DEFAULT_PORTS = {
    "pebble": 14000,
    "pebble-management": 15000,
    "dns": 8053,
    "dns-management": 8055,
    "nats": 4222,
    "haproxy-stats": 8404,
    "signer": 9125,
    "admin": 9443,
}
PORT_BASES = {"frontend": 8443, "frontend-metrics": 9130, "validator": 9140,
              "perspective": lab_perspectives.PORT_BASE}
# Servers the lab uses as they are when something already listens on their port.
SHARED_PORTS = {"pebble", "pebble-management", "dns", "dns-management", "nats"}
# The lab's HAProxy configuration (the same file docker-compose mounts).
HAPROXY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
# The alert rules the lab's Prometheus configuration loads (the compose lab's too).
ALERT_RULES = HAPROXY_CONFIG.parents[1] / "prometheus" / "alerts.yml"
INSTALL_HINT = "apt-get install -y pebble haproxy postgresql"


class LabPorts:
    """Where each lab process listens: the usual ports, or (tests) any free ones."""

    def __init__(self, fixed: Mapping[str, int] | None = None, *, any_free: bool = False) -> None:
        self._ports = dict(fixed or {})
        self._any_free = any_free

    def __call__(self, key: str) -> int:
        if key not in self._ports:
            port = free_port() if self._any_free else self.default(key)
            if key not in SHARED_PORTS and not port_is_free(port):
                port = free_port()  # the lab's own listeners move; shared servers are used as found
            self._ports[key] = port
        return self._ports[key]

    @staticmethod
    def default(key: str) -> int:
        if key in DEFAULT_PORTS:
            return DEFAULT_PORTS[key]
        base, _, number = key.rpartition("-")
        if base in PORT_BASES and number.isdigit():
            return PORT_BASES[base] + int(number)
        if key.endswith("-metrics"):  # frontend-N-metrics
            service, _, number = key.removesuffix("-metrics").rpartition("-")
            return PORT_BASES[f"{service}-metrics"] + int(number)
        raise KeyError(key)


def debian_binary(name: str, directory: str = "/usr/bin") -> str | None:
    """A program of a Debian package: on PATH, else in ``directory`` (/usr/sbin may not be on a
    normal user's PATH); None when not installed."""
    found = shutil.which(name) or f"{directory}/{name}"
    return found if os.access(found, os.X_OK) else None


def haproxy_binary() -> str | None:
    return debian_binary("haproxy", "/usr/sbin")


def _path_only() -> dict[str, str]:
    """The environment of a server that reads no ACME_RA_* variable."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def ensure_postgres_database(url: str, *, recreate: bool = False) -> bool:
    """Create the database of a PostgreSQL URL (through ``postgres``) when it does not exist, or
    drop and create it again with ``recreate``. Returns whether it existed before."""
    import asyncpg

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return False

    async def create() -> bool:
        admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        connection = await asyncpg.connect(admin, timeout=5)
        try:
            existed = bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                                     parsed.database))
            if existed and recreate:
                await connection.execute(f'DROP DATABASE "{parsed.database}" WITH (FORCE)')
            if not existed or recreate:
                await connection.execute(f'CREATE DATABASE "{parsed.database}"')
            return existed
        finally:
            await connection.close()

    try:
        return asyncio.run(create())
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        shown = parsed.render_as_string(hide_password=True)
        raise LaunchError(
            f"PostgreSQL at {shown} is not usable ({type(error).__name__}: {error}); start it "
            f"({INSTALL_HINT}) or set ACME_RA_DATABASE_URL"
        ) from None


def nats_service(port: int, config: Path, store: Path, env: dict[str, str]) -> Service:
    """nats-server with JetStream (storage in ``store``) and the users of ``config`` (acme_ra.natsauth)."""
    argv = [nats_server_binary(), "-c", str(config), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)]
    return Service("nats-server", argv, env, ready=lambda: nats_ready(port))


def challtestsrv_service(dns: int, management: int) -> Service | None:
    """pebble-challtestsrv answering DNS on ``dns`` (127.0.0.1 for every name); None when
    something listens on its ports already."""
    if tcp_listening(dns) or tcp_listening(management):
        return None
    binary = debian_binary("pebble-challtestsrv")
    if binary is None:
        raise LaunchError(f"no pebble-challtestsrv: the lab's DNS. Install it: {INSTALL_HINT}")
    argv = [binary, "-dns01", f"127.0.0.1:{dns}", "-management", f"127.0.0.1:{management}",
            "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]
    return Service("challtestsrv", argv, _path_only(), ready=lambda: tcp_listening(management))


def pebble_service(port: int, management: int, *, dns: int, directory: str, ca_bundle: Path | None,
                   tls: TlsMaterial, config: Path) -> Service | None:
    """Pebble serving ``directory`` on ``port`` with the lab's EAB key and TLS certificate, asking
    the lab's DNS; its configuration written to ``config``. None when a Pebble whose certificate
    ``ca_bundle`` trusts answers there already; LaunchError when something else does."""
    context = ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else ssl.create_default_context()
    if tcp_listening(port):
        try:
            http_ok(directory, context)
        except (OSError, httpx.HTTPError, NotReady) as error:
            raise LaunchError(
                f"something listens on port {port} but {directory} does not answer as a Pebble whose "
                f"certificate {ca_bundle} trusts ({error}); stop it, or set ACME_RA_UPSTREAM_CA_BUNDLE "
                "to its TLS CA"
            ) from None
        return None
    binary = debian_binary("pebble")
    if binary is None:
        raise LaunchError(f"no pebble: the lab's upstream CA. Install it: {INSTALL_HINT}")
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(tls.cert("pebble")),
        "privateKey": str(tls.key("pebble")),
        "httpPort": 5002,
        "tlsPort": 5001,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": True,
        "externalAccountMACKeys": {PEBBLE_EAB_KID: PEBBLE_EAB_HMAC_KEY},
    }}, indent=2) + "\n")
    argv = [binary, "-config", str(config), "-strict=false", "-dnsserver", f"127.0.0.1:{dns}"]
    env = {
        **_path_only(),
        # A lab CA: every authorization is valid at once (acme-ra's validators did the real
        # check), no artificial sleeps, no random badNonce.
        "PEBBLE_VA_ALWAYS_VALID": "1",
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
    }
    return Service("pebble", argv, env, ready=lambda: http_ok(directory, context),
                   endpoints={"management": f"https://localhost:{management}"})


def haproxy_service(lb_port: int, stats_port: int, frontend_ports: list[int], *, tls: TlsMaterial,
                    frontend_ca: Path, ready: Callable[[], bool]) -> Service:
    """HAProxy terminating TLS on ``lb_port`` (the lab TLS CA's certificate) and re-encrypting to
    the frontends (certificates ``frontend_ca`` trusts), round robin; stats and metrics on ``stats_port``."""
    if len(frontend_ports) > 2:
        raise LaunchError("deploy/haproxy/haproxy.cfg names two frontends; the lab runs at most two")
    env = {
        **_path_only(),
        "LB_BIND": f"127.0.0.1:{lb_port}",
        "LB_CERT": str(tls.combined("haproxy")),
        "LB_STATS_BIND": f"127.0.0.1:{stats_port}",
        "LB_FRONTEND_CA": str(frontend_ca),
        "LB_FRONTEND_NAME": "localhost",
        "LB_ALLOW_PINNING": "1",  # a test client may alternate between the frontends
        # With one frontend, the second server line names the first one again.
        "LB_FRONTEND_1": f"127.0.0.1:{frontend_ports[0]}",
        "LB_FRONTEND_2": f"127.0.0.1:{frontend_ports[-1]}",
    }
    return Service("haproxy", [str(haproxy_binary()), "-db", "-f", str(HAPROXY_CONFIG)], env, echo=False,
                   ready=ready, endpoints={"metrics": f"http://127.0.0.1:{stats_port}/metrics"})


def write_prometheus_config(path: Path, services: Iterable[Service]) -> Path:
    """A Prometheus configuration for every /metrics of ``services``: the jobs of the compose
    lab's (frontend, validator, signer, haproxy: ``validator-2`` is a ``validator``) and its alert rules."""
    jobs: dict[str, list[str]] = {}
    for service in services:
        url = service.endpoints.get("metrics")
        if url:
            job = service.name.split("-")[0] if service.name[-1].isdigit() else service.name
            jobs.setdefault(job, []).append(urlsplit(url).netloc)
    lines = ["# Written by `make lab`: prometheus --config.file=<this file>"]
    if ALERT_RULES.is_file():
        lines += ["rule_files:", f"  - {ALERT_RULES}"]
    lines.append("scrape_configs:")
    for job, targets in jobs.items():
        lines += [f"  - job_name: {job}", "    static_configs:",
                  f"      - targets: [{', '.join(repr(t) for t in targets)}]"]
    path.write_text("\n".join(lines) + "\n")
    return path
