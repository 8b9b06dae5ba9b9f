"""The real processes the chaos tests start, fault and restart: a PostgreSQL instance of their
own (``tests.support.postgres``), nats-servers (alone or a 3-node JetStream cluster), and the
acme-ra services, each a child process that can be killed with SIGKILL or stopped with SIGTERM.

Everything listens on 127.0.0.1 on free ports and lives in a temp dir; everything stops itself
(``stop()``) with bounded waits, so that a failing test never leaves a process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from acme_ra import natsauth
from acme_ra.config import ENV_PREFIX
from acme_ra_tools.supervisor import Child, free_port, nats_server_binary

# How long a process may take to start, or to stop after SIGTERM (seconds).
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
POLL_SECONDS = 0.1


def wait_for(what: str, ready: object, timeout: float = START_TIMEOUT_SECONDS, child: Child | None = None) -> None:
    """Poll ``ready()`` until it is true; fail (naming ``what``) on timeout or when ``child`` exits."""
    deadline = time.monotonic() + timeout
    last = "not ready"
    while True:
        if child is not None and child.returncode is not None:
            raise RuntimeError(f"{what} exited with status {child.returncode}\n{child.describe_failure()}")
        try:
            if ready():  # type: ignore[operator]
                return
        except (OSError, httpx.HTTPError) as error:
            last = str(error) or type(error).__name__
        if time.monotonic() > deadline:
            detail = f"\n{child.describe_failure()}" if child is not None else ""
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s: {last}{detail}")
        time.sleep(POLL_SECONDS)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# NATS -----------------------------------------------------------------------------------------


def _nats_info(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        return sock.recv(4096)


class NatsServer:
    """One nats-server with JetStream and a persistent store (``-sd``), on a port it keeps over
    restarts; optionally a node of a cluster (``cluster_port`` and ``routes``)."""

    def __init__(self, workdir: Path, name: str = "nats", *, cluster_port: int | None = None,
                 routes: list[int] | None = None) -> None:
        self.workdir = workdir
        # A user per service, as make dev and make lab run it (acme_ra.natsauth); shared by a
        # cluster's nodes.
        self.auth_dir = workdir / natsauth.AUTH_DIR_NAME
        self.name = name
        self.port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.store = workdir / f"{name}-store"
        self.log_path = workdir / f"{name}.log"
        self.child: Child | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        config = natsauth.write_server_config(self.auth_dir)
        argv = [nats_server_binary(), "-c", str(config), "-js", "-sd", str(self.store), "-a", "127.0.0.1",
                "-p", str(self.port), "-n", self.name]
        if self.cluster_port is not None:
            argv += ["--cluster_name", "acme-ra-chaos", "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            if self.routes:
                argv += ["--routes", ",".join(f"nats://127.0.0.1:{port}" for port in self.routes)]
        return argv

    def start(self, wait: bool = True) -> None:
        assert self.child is None or self.child.returncode is not None
        self.child = Child(self.name, self.argv(), os.environ, self.log_path, echo=None)
        self.starts += 1
        if wait:
            wait_for(self.name, lambda: b'"jetstream":true' in _nats_info(self.port), child=self.child)

    def terminate(self) -> None:
        """SIGTERM: a clean shutdown (JetStream flushes its store)."""
        if self.child is not None:
            self.child.terminate()
            self.child.wait_stopped(STOP_TIMEOUT_SECONDS)

    def kill(self) -> None:
        if self.child is not None and self.child.returncode is None:
            os.killpg(self.child.process.pid, signal.SIGKILL)
            self.child.wait_stopped(STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        self.terminate()


class NatsCluster:
    """Three nats-servers on loopback in one JetStream cluster (full mesh of routes)."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(workdir, f"nats-{n + 1}", cluster_port=cluster_ports[n],
                       routes=[p for i, p in enumerate(cluster_ports) if i != n])
            for n in range(size)
        ]

    @property
    def url(self) -> str:
        """Every node, comma-separated (bus.connect takes such a list)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def auth_dir(self) -> Path:
        return self.nodes[0].auth_dir

    def start(self) -> None:
        for node in self.nodes:  # all at once: JetStream waits for a quorum of peers
            node.start(wait=False)
        for node in self.nodes:
            wait_for(node.name, lambda node=node: port_open(node.port), child=node.child)

    def node(self, name: str) -> NatsServer:
        return next(node for node in self.nodes if node.name == name)

    def stop(self) -> None:
        for node in self.nodes:
            node.terminate()


# The acme-ra services ------------------------------------------------------------------------


@dataclass
class Service:
    """One running service process."""

    kind: str  # frontend | validator | signer
    name: str
    child: Child
    env: dict[str, str]
    health_url: str  # /readyz

    @property
    def pid(self) -> int:
        return self.child.process.pid

    @property
    def running(self) -> bool:
        return self.child.returncode is None

    def kill(self) -> None:
        """kill -9: no shutdown code runs, nothing is acked, leases are not released."""
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
        self.child.wait_stopped(STOP_TIMEOUT_SECONDS)

    def sigterm(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """Wait for the process to exit by itself (after SIGTERM); its exit status."""
        self.child.wait_stopped(timeout)
        code = self.child.returncode
        assert code is not None
        return code

    def metrics(self, client: httpx.Client) -> str:
        return client.get(self.health_url.removesuffix("/readyz") + "/metrics").text


class Deployment:
    """The acme-ra services of one test, on top of ``env`` (database, NATS, upstream...)."""

    def __init__(self, workdir: Path, env: Mapping[str, str], ca_bundle: Path,
                 nats_auth_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.nats_auth_dir = nats_auth_dir  # each service its own NATS user (acme_ra.natsauth)
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env)
        self.ca_bundle = ca_bundle
        self.services: list[Service] = []
        self._counts: dict[str, int] = {}

    def start(self, kind: str, wait: bool = True, **overrides: str) -> Service:
        """Start one more ``kind`` process (its own health/listen port); wait until /readyz says 200."""
        self._counts[kind] = self._counts.get(kind, 0) + 1
        name = f"{kind}-{self._counts[kind]}"
        env = dict(self.env)
        if self.nats_auth_dir is not None:
            env.update(natsauth.service_env(self.nats_auth_dir, kind))
        if kind == "frontend":
            port = overrides.pop("port", None) or self.env[f"{ENV_PREFIX}LISTEN"].rpartition(":")[2]
            env[f"{ENV_PREFIX}LISTEN"] = f"127.0.0.1:{port}"
            env[f"{ENV_PREFIX}METRICS_LISTEN"] = f"127.0.0.1:{free_port()}"
            health = f"https://localhost:{port}/readyz"
        else:
            listen = f"{ENV_PREFIX}{kind.upper()}_LISTEN"
            env[listen] = f"127.0.0.1:{free_port()}"
            health = f"http://{env[listen]}/readyz"
        env.update({f"{ENV_PREFIX}{key.upper()}": value for key, value in overrides.items()})
        child = Child(name, [sys.executable, "-m", f"acme_ra_{kind}"], env, self.log_dir / f"{name}.log", echo=None)
        service = Service(kind, name, child, env, health)
        self.services.append(service)
        if wait:
            self.wait_ready(service)
        return service

    def wait_ready(self, service: Service, timeout: float = START_TIMEOUT_SECONDS) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with httpx.Client(verify=context, trust_env=False, timeout=3) as client:
            wait_for(service.name, lambda: client.get(service.health_url).status_code == 200, timeout, service.child)

    def running(self, kind: str) -> list[Service]:
        return [s for s in self.services if s.kind == kind and s.running]

    def stop(self) -> None:
        """SIGTERM everything still running (SIGKILL after the stop timeout)."""
        for service in self.services:
            service.child.terminate()
        for service in self.services:
            service.child.wait_stopped(STOP_TIMEOUT_SECONDS)

    def logs(self, limit: int = 6000) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"----- {path.name}\n{path.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts)
