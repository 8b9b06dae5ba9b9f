"""`make lab`: the docker-compose topology as processes on one machine, without Docker.

What runs (the same ``ACME_RA_*`` variables as docker-compose.yml and ``make dev``):

- this machine's PostgreSQL (``ACME_RA_DATABASE_URL``; default :data:`DEFAULT_DATABASE_URL`,
  created when missing) and a nats-server with JetStream (started unless ``ACME_RA_NATS_URL``);
- Pebble as the upstream CA (``https://localhost:14000/dir``, management 15000, EAB ``kid-1`` of
  Pebble's example configuration) and pebble-challtestsrv as the lab's DNS (8053, management
  8055), both from Debian's ``pebble`` package; when something already listens on those ports,
  the lab uses it instead of starting its own;
- two frontends behind HAProxy (Debian's ``haproxy``), which terminates TLS on the external URL's
  port (8443) and re-encrypts to the frontends; ``--validators N`` validators; the signer;
- ``--perspectives N`` remote network perspectives (default 3; lab_perspectives.py), which the
  validators ask for every check (multi-perspective corroboration, docs/perspectives.md);
- the admin API and console (``python -m acme_ra_admin``) on ``ACME_RA_ADMIN_LISTEN``
  (127.0.0.1:9443), as docker-compose.yml's ``admin`` service.

The TLS certificates of HAProxy, the frontends and Pebble come from a throw-away *lab TLS CA*
(``STATE_DIR/lab/tls``) whose root is written to ``STATE_DIR/ca-bundle.pem``: what ACME clients
must trust, as with ``make dev``. A process that dies is restarted (docker compose's
``restart: unless-stopped``); Ctrl-C stops everything.

``python -m acme_ra_tools.lab init DIR`` writes the same TLS material for docker-compose's init job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url

from acme_ra import natsauth
from acme_ra.config import ENV_PREFIX, Settings, get_settings
from acme_ra.redaction import mask_url
from acme_ra_tools import lab_perspectives
from acme_ra_tools.dev import Topology
from acme_ra_tools.lab_tls import LOCAL_NAMES, TlsMaterial, ensure_tls_material, write_private
from acme_ra_tools.supervisor import (
    LAB_DEFAULTS,
    POLL_INTERVAL_SECONDS,
    READY_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    Child,
    LaunchError,
    NotReady,
    free_port,
    http_ok,
    nats_ready,
    nats_server_binary,
    port_is_free,
    run_step,
    serve,
    settings_from_env,
    tcp_listening,
    wait_until,
)

# ACME_RA_DATABASE_URL when unset: a database of this machine's PostgreSQL (created if missing).
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/acme_ra_lab"
# The EAB pair of Pebble's example configuration (pebble-config-external-account-bindings.json):
# public test values, the same in docker-compose.yml.
PEBBLE_EAB_KID = "kid-1"
PEBBLE_EAB_HMAC_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
# Validators started when --validators is not given (make lab VALIDATORS=N).
DEFAULT_VALIDATORS = 2
# Frontends behind the load balancer.
DEFAULT_FRONTENDS = 2
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
# Restart back-off of a process that died: first delay, doubled up to the maximum (seconds);
# a process that ran this long before dying starts again from the first delay.
RESTART_FIRST_DELAY_SECONDS = 1.0
RESTART_MAX_DELAY_SECONDS = 30.0
RESTART_RESET_AFTER_SECONDS = 60.0
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


# Processes ----------------------------------------------------------------------------------


@dataclass
class Service:
    """A process the lab keeps running: restarted with back-off when it dies."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool] | None = None
    echo: bool = True  # its output on the terminal too (acme-ra's services; not the infrastructure)
    endpoints: dict[str, str] = field(default_factory=dict)  # printed: what -> URL
    child: Child | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    delay: float = RESTART_FIRST_DELAY_SECONDS


def haproxy_binary() -> str | None:
    """Debian's haproxy lives in /usr/sbin, which a normal user's PATH may lack."""
    found = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return found if os.access(found, os.X_OK) else None


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


class ProcessLab:
    """The lab's processes. ``env`` is every child's environment (default: this process's);
    ``ports`` where each listens (default: the usual ports)."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        frontends: int = DEFAULT_FRONTENDS,
        validators: int = DEFAULT_VALIDATORS,
        perspectives: int = 0,
        ports: LabPorts | None = None,
        echo: IO[bytes] | None = None,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
    ) -> None:
        if frontends < 1 or validators < 0:
            raise LaunchError("a lab needs at least one frontend and no negative number of validators")
        self.ports = ports or LabPorts()
        self.frontends = frontends
        self.validators = validators
        self.perspectives = perspectives
        self.echo = echo
        self.ready_timeout = ready_timeout
        self.env = self._lab_env(dict(os.environ if env is None else env))
        self.state_dir = Path(self.env[ENV_PREFIX + "STATE_DIR"])
        self.log_dir = self.state_dir / "logs"
        self.lab_dir = self.state_dir / "lab"
        self.tls = TlsMaterial(self.lab_dir / "tls")
        # The files exist before the settings are read: the settings check that they do.
        self._write_tls_material()
        self._new_secret = self._write_secret_key()
        self.settings = settings_from_env(self.env)
        self.services: dict[str, Service] = {}
        # The users and passwords of the nats-server the lab starts (acme_ra.natsauth); None when
        # it uses a NATS found running (ACME_RA_NATS_URL: the services' ACME_RA_NATS_* say how).
        self.nats_auth_dir: Path | None = None
        self.started_here: list[str] = []  # infrastructure the lab started (vs found running)
        self.found_running: list[str] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._events: list[str] = []

    # Configuration --------------------------------------------------------------------------

    def _lab_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The user's environment over the lab's defaults (the same names compose sets)."""
        state_dir = Path(base.get(ENV_PREFIX + "STATE_DIR", "./var")).resolve()
        tls = TlsMaterial(state_dir / "lab" / "tls")
        defaults = {
            **LAB_DEFAULTS,
            "STATE_DIR": str(state_dir),
            "DATABASE_URL": DEFAULT_DATABASE_URL,
            "UPSTREAM": "acme",
            "UPSTREAM_DIRECTORY_URL": f"https://localhost:{self.ports('pebble')}/dir",
            "UPSTREAM_EAB_KID": PEBBLE_EAB_KID,
            "UPSTREAM_EAB_HMAC_KEY": PEBBLE_EAB_HMAC_KEY,
            "UPSTREAM_CA_BUNDLE": str(tls.ca),
            "SECRET_KEY_FILE": str(state_dir / "lab" / "secret.key"),
            "TLS_CERT_FILE": str(tls.cert("frontend")),
            "TLS_KEY_FILE": str(tls.key("frontend")),
            "DNS_RESOLVERS": f"127.0.0.1:{self.ports('dns')}",
            "TRUSTED_PROXIES": "127.0.0.1/32,::1/128",
            "SIGNER_LISTEN": f"127.0.0.1:{self.ports('signer')}",
            "ADMIN_LISTEN": f"127.0.0.1:{self.ports('admin')}",
            "RATE_NEW_ACCOUNTS_PER_IP_PER_HOUR": "0",
            "RATE_NEW_ORDERS_PER_ACCOUNT_PER_HOUR": "0",
            "RATE_CERTIFICATES_PER_DOMAIN_PER_WEEK": "0",
            "MPIC_REMOTE_PERSPECTIVES": str(self.perspectives),
        }
        env = {(k if k.startswith(ENV_PREFIX) else ENV_PREFIX + k): v for k, v in defaults.items()}
        env.update(base)
        env[ENV_PREFIX + "STATE_DIR"] = str(state_dir)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @property
    def directory_url(self) -> str:
        return f"{self.settings.external_url}/acme/{self.settings.provisioner_names[0]}/directory"

    @property
    def ca_bundle(self) -> Path:
        return self.state_dir / "ca-bundle.pem"

    @property
    def lb_port(self) -> int:
        parts = urlsplit(self.settings.external_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def _client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def _uses_lab_pebble(self) -> bool:
        return (self.settings.upstream == "acme"
                and self.settings.upstream_directory_url == f"https://localhost:{self.ports('pebble')}/dir")

    def _uses_lab_dns(self) -> bool:
        return self.settings.dns_resolvers == f"127.0.0.1:{self.ports('dns')}"

    # Start ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything, wait until it is ready, then supervise; on failure stop and raise."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(exist_ok=True)
            if haproxy_binary() is None:
                raise LaunchError(f"no haproxy on PATH: the lab's load balancer. Install it: {INSTALL_HINT}")
            if not port_is_free(self.lb_port):
                raise LaunchError(
                    f"port {self.lb_port} (ACME_RA_EXTERNAL_URL {self.settings.external_url}) is taken: "
                    "is make dev or another lab running?"
                )
            self._start_nats()
            if self._uses_lab_dns():
                self._start_challtestsrv()
            if self._uses_lab_pebble():
                self._start_pebble()
            self._prepare_database()
            self._run_step("migrate", [sys.executable, "-m", "acme_ra_tools.cli", "migrate"])
            self._run_step("bootstrap", [sys.executable, "-m", "acme_ra_signer", "bootstrap"])
            services = [self._add_signer()]
            services += [self._add_perspective(number) for number in range(1, self.perspectives + 1)]
            services += [self._add_validator(number) for number in range(1, self.validators + 1)]
            services += [self._add_frontend(number) for number in range(1, self.frontends + 1)]
            services.append(self._add_admin())
            for service in services:
                self._spawn(service)
            for service in services:
                self._wait_ready(service)
            self._add_haproxy()
            self._write_prometheus_config()
            self._supervisor = threading.Thread(target=self._supervise, name="lab-supervisor", daemon=True)
            self._supervisor.start()
        except BaseException:
            self.stop()
            raise

    def _write_tls_material(self) -> None:
        external_url = self.env.get(ENV_PREFIX + "EXTERNAL_URL", Settings.model_fields["external_url"].default)
        host = (urlsplit(external_url).hostname or "localhost").lower()
        names = [host] + [n for n in LOCAL_NAMES if n != host]
        ensure_tls_material(self.tls.directory, {"haproxy": names, "frontend": LOCAL_NAMES, "pebble": LOCAL_NAMES})
        bundle = self.tls.ca.read_bytes()
        if not self.ca_bundle.is_file() or self.ca_bundle.read_bytes() != bundle:
            write_private(self.ca_bundle, bundle, 0o644)

    def _write_secret_key(self) -> bool:
        """The sealing secret every service shares (ACME_RA_SECRET_KEY_FILE), created once.
        Returns whether it was created now."""
        if self.env.get(ENV_PREFIX + "SECRET_KEY"):
            return False
        path = Path(self.env[ENV_PREFIX + "SECRET_KEY_FILE"])
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, secrets.token_urlsafe(32).encode() + b"\n", 0o600)
        return True

    def _prepare_database(self) -> None:
        """The lab's own database (the default URL) goes with its state dir: a new sealing secret
        (a new or cleaned state dir) cannot open what an earlier lab sealed in it, so it starts
        afresh. A database the user named is never dropped."""
        url = self.settings.effective_database_url
        recreate = self._new_secret and url == DEFAULT_DATABASE_URL
        if ensure_postgres_database(url, recreate=recreate) and recreate:
            self._say(f"database {make_url(url).database} was an earlier lab's (sealed with another "
                      f"ACME_RA_SECRET_KEY): created anew")

    def _start_nats(self) -> None:
        if self.settings.nats_url:
            self.found_running.append(f"NATS {mask_url(self.settings.nats_url)}")
            return
        port = self.ports("nats")
        if not port_is_free(port):
            port = free_port()
        self.nats_auth_dir = self.state_dir / natsauth.AUTH_DIR_NAME
        config = natsauth.write_server_config(self.nats_auth_dir)
        service = Service("nats-server", [nats_server_binary(), "-c", str(config), "-js",
                                          "-sd", str(self.state_dir / "nats"), "-a", "127.0.0.1", "-p", str(port)],
                          dict(self.env), ready=lambda: nats_ready(port))
        self._start_infrastructure(service)
        self.env[ENV_PREFIX + "NATS_URL"] = f"nats://127.0.0.1:{port}"
        self.settings = settings_from_env(self.env)

    def _start_challtestsrv(self) -> None:
        dns, management = self.ports("dns"), self.ports("dns-management")
        if tcp_listening(dns) or tcp_listening(management):
            self.found_running.append(f"DNS 127.0.0.1:{dns} (already running)")
            return
        binary = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"
        if not os.access(binary, os.X_OK):
            raise LaunchError(f"no pebble-challtestsrv: the lab's DNS. Install it: {INSTALL_HINT}")
        argv = [binary, "-dns01", f"127.0.0.1:{dns}", "-management", f"127.0.0.1:{management}",
                "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]
        self._start_infrastructure(Service("challtestsrv", argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                           ready=lambda: tcp_listening(management)))

    def _start_pebble(self) -> None:
        port, management = self.ports("pebble"), self.ports("pebble-management")
        directory = self.settings.upstream_directory_url
        bundle = self.settings.upstream_ca_bundle
        context = ssl.create_default_context(cafile=str(bundle)) if bundle else ssl.create_default_context()
        if tcp_listening(port):
            try:
                http_ok(directory, context)
            except (OSError, httpx.HTTPError, NotReady) as error:
                raise LaunchError(
                    f"something listens on port {port} but {directory} does not answer as a Pebble whose "
                    f"certificate {bundle} trusts ({error}); stop it, or set ACME_RA_UPSTREAM_CA_BUNDLE "
                    "to its TLS CA"
                ) from None
            self.found_running.append(f"Pebble {directory} (already running)")
            return
        binary = shutil.which("pebble") or "/usr/bin/pebble"
        if not os.access(binary, os.X_OK):
            raise LaunchError(f"no pebble: the lab's upstream CA. Install it: {INSTALL_HINT}")
        config = self.lab_dir / "pebble-config.json"
        import json

        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(self.tls.cert("pebble")),
            "privateKey": str(self.tls.key("pebble")),
            "httpPort": 5002,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": True,
            "externalAccountMACKeys": {PEBBLE_EAB_KID: PEBBLE_EAB_HMAC_KEY},
        }}, indent=2) + "\n")
        argv = [binary, "-config", str(config), "-strict=false", "-dnsserver", f"127.0.0.1:{self.ports('dns')}"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # A lab CA: every authorization is valid at once (acme-ra's validators did the real
            # check), no artificial sleeps, no random badNonce.
            "PEBBLE_VA_ALWAYS_VALID": "1",
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
        }
        self._start_infrastructure(Service("pebble", argv, env, ready=lambda: http_ok(directory, context),
                                           endpoints={"management": f"https://localhost:{management}"}))

    def _start_infrastructure(self, service: Service) -> None:
        service.echo = False
        self.services[service.name] = service
        self.started_here.append(service.name)
        self._spawn(service)
        self._wait_ready(service)

    def _service_env(self, role: str, **extra: str) -> dict[str, str]:
        """A service's environment: with the lab's own nats-server, its own NATS user and password."""
        env = dict(self.env, **extra)
        if self.nats_auth_dir is not None:
            env.update(natsauth.service_env(self.nats_auth_dir, role))
        return env

    def _add_signer(self) -> Service:
        base = f"http://{self.settings.signer_listen}"
        service = Service("signer", [sys.executable, "-m", "acme_ra_signer"], self._service_env("signer"),
                          ready=lambda: http_ok(base + "/readyz"), endpoints={"metrics": base + "/metrics"})
        self.services["signer"] = service
        return service

    def _add_validator(self, number: int) -> Service:
        name = f"validator-{number}"
        base = f"http://127.0.0.1:{self.ports(name)}"
        env = self._service_env("validator", **{ENV_PREFIX + "VALIDATOR_LISTEN": f"127.0.0.1:{self.ports(name)}",
                                                "OTEL_SERVICE_NAME": f"acme-ra-{name}"})
        service = Service(name, [sys.executable, "-m", "acme_ra_validator"], env,
                          ready=lambda: http_ok(base + "/readyz"), endpoints={"metrics": base + "/metrics"})
        self.services[name] = service
        return service

    def _add_perspective(self, number: int) -> Service:
        name = f"perspective-{number}"
        service = lab_perspectives.perspective_service(number, self.ports(name), self._service_env, Service)
        self.services[name] = service
        return service

    def _add_frontend(self, number: int) -> Service:
        name = f"frontend-{number}"
        port, metrics = self.ports(name), self.ports(f"{name}-metrics")
        env = self._service_env("frontend", **{ENV_PREFIX + "LISTEN": f"127.0.0.1:{port}",
                                               ENV_PREFIX + "METRICS_LISTEN": f"127.0.0.1:{metrics}",
                                               "OTEL_SERVICE_NAME": f"acme-ra-{name}"})
        service = Service(
            name, [sys.executable, "-m", "acme_ra_frontend"], env,
            ready=lambda: http_ok(f"https://localhost:{port}/readyz", self._frontend_context()),
            endpoints={"metrics": f"http://127.0.0.1:{metrics}/metrics", "acme": f"https://localhost:{port}"})
        self.services[name] = service
        return service

    @property
    def admin_url(self) -> str:
        """The admin API (``/api/``) and console, as ``make dev`` prints it."""
        return self.settings.admin_base_url

    def _add_admin(self) -> Service:
        """The admin API and console; ready when its database answers and it is connected to
        NATS (revocation goes to the signer through NATS)."""
        ready_url = self.admin_url + "/readyz"

        def ready() -> bool:
            with httpx.Client(trust_env=False, timeout=2) as client:
                response = client.get(ready_url)
            nats = response.json().get("nats") if response.status_code == 200 else None
            if nats != "connected":
                raise NotReady(f"{ready_url} answered {response.status_code}: {response.text[:300]}")
            return True

        service = Service("admin", [sys.executable, "-m", "acme_ra_admin"],
                          self._service_env("admin", OTEL_SERVICE_NAME="acme-ra-admin"), ready=ready,
                          endpoints={"console": self.admin_url + "/"})
        self.services["admin"] = service
        return service

    def admin_token_command(self) -> str:
        """The command line that makes an admin token on the lab's database."""
        cli = Path(sys.executable).parent / "acme-ra"
        command = f"{cli if cli.is_file() else 'acme-ra'} admin-token create --label me"
        if self.env.get(ENV_PREFIX + "DATABASE_URL") == DEFAULT_DATABASE_URL:  # not in the user's shell
            command = f"{ENV_PREFIX}DATABASE_URL={DEFAULT_DATABASE_URL} {command}"
        return command

    def _frontend_context(self) -> ssl.SSLContext:
        if self.settings.tls_cert_file == self.tls.cert("frontend"):
            return self._client_context()
        context = ssl.create_default_context()  # the operator's own certificate: the system's roots
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def _add_haproxy(self) -> None:
        frontends = [s for s in self.services if s.startswith("frontend-")]
        if len(frontends) > 2:
            raise LaunchError("deploy/haproxy/haproxy.cfg names two frontends; the lab runs at most two")
        stats = self.ports("haproxy-stats")
        frontend_ca = str(self.tls.ca if self.settings.tls_cert_file == self.tls.cert("frontend")
                          else "/etc/ssl/certs/ca-certificates.crt")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LB_BIND": f"127.0.0.1:{self.lb_port}",
            "LB_CERT": str(self.tls.combined("haproxy")),
            "LB_STATS_BIND": f"127.0.0.1:{stats}",
            "LB_FRONTEND_CA": frontend_ca,
            "LB_FRONTEND_NAME": "localhost",
            "LB_ALLOW_PINNING": "1",  # a test client may alternate between the frontends
            # With one frontend, the second server line names the first one again.
            "LB_FRONTEND_1": f"127.0.0.1:{self.ports(frontends[0])}",
            "LB_FRONTEND_2": f"127.0.0.1:{self.ports(frontends[-1])}",
        }
        service = Service("haproxy", [str(haproxy_binary()), "-db", "-f", str(HAPROXY_CONFIG)], env, echo=False,
                          ready=lambda: http_ok(self.directory_url, self._client_context()),
                          endpoints={"metrics": f"http://127.0.0.1:{stats}/metrics"})
        self.services["haproxy"] = service
        self.started_here.append("haproxy")
        self._spawn(service)
        self._wait_ready(service)

    def _write_prometheus_config(self) -> Path:
        """A Prometheus configuration for every /metrics of the lab (STATE_DIR/lab/prometheus.yml):
        the jobs of the compose lab's (frontend, validator, signer, haproxy) and its alert rules."""
        jobs: dict[str, list[str]] = {}
        for service in self.services.values():
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
        path = self.lab_dir / "prometheus.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    # Processes ------------------------------------------------------------------------------

    def _spawn(self, service: Service) -> None:
        log = self.log_dir / f"{service.name}.log"
        service.child = Child(service.name, service.argv, service.env, log, self.echo if service.echo else None)
        service.started_at = time.monotonic()
        service.restart_at = None

    def _wait_ready(self, service: Service) -> None:
        if service.ready is None or service.child is None:
            return
        wait_until(service.name, service.ready, [service.child], timeout=self.ready_timeout,
                   stopping=self._stop.is_set)

    def _run_step(self, step: str, argv: list[str]) -> None:
        child = Child(step, argv, self.env, self.log_dir / f"{step}.log", self.echo)
        run_step(child, timeout=self.ready_timeout, stopping=self._stop.is_set)

    def _supervise(self) -> None:
        """Restart what dies, with back-off (docker compose's ``restart: unless-stopped``)."""
        while not self._stop.wait(POLL_INTERVAL_SECONDS):
            with self._lock:
                now = time.monotonic()
                for service in list(self.services.values()):
                    child = service.child
                    if child is None or child.returncode is None:
                        continue
                    if service.restart_at is None:
                        if now - service.started_at > RESTART_RESET_AFTER_SECONDS:
                            service.delay = RESTART_FIRST_DELAY_SECONDS
                        service.restart_at = now + service.delay
                        self._say(f"{service.name} exited with status {child.returncode}; restarting in "
                                  f"{service.delay:.0f}s (log: {child.log_path})")
                        service.delay = min(service.delay * 2, RESTART_MAX_DELAY_SECONDS)
                    elif now >= service.restart_at:
                        child.wait_stopped(STOP_TIMEOUT_SECONDS)
                        service.restarts += 1
                        self._spawn(service)

    def _say(self, message: str) -> None:
        self._events.append(message)
        print(f"acme-ra lab: {message}", file=sys.stderr, flush=True)

    def validator_names(self) -> list[str]:
        return sorted((n for n in self.services if n.startswith("validator-")), key=lambda n: int(n.split("-")[1]))

    def scale_validators(self, count: int) -> None:
        """Run exactly ``count`` validators (``docker compose up --scale validator=N``)."""
        with self._lock:
            names = self.validator_names()
            for name in names[count:]:
                self._stop_service(self.services.pop(name))
            added = [self._add_validator(number) for number in range(len(names) + 1, count + 1)]
            for service in added:
                self._spawn(service)
        for service in added:
            self._wait_ready(service)
        self.validators = count
        self._write_prometheus_config()

    def _stop_service(self, service: Service) -> None:
        if service.child is not None:
            service.child.terminate()
            service.child.wait_stopped(STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """Stop the services (all at once), then haproxy, Pebble, challtestsrv, nats-server."""
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(STOP_TIMEOUT_SECONDS)
        with self._lock:
            order = ["frontend", "admin", "validator", "perspective", "signer", "haproxy", "pebble", "challtestsrv", "nats-server"]
            for prefix in order:
                group = [s for n, s in self.services.items() if n.startswith(prefix)]
                for service in group:
                    if service.child is not None:
                        service.child.terminate()
                for service in group:
                    if service.child is not None:
                        service.child.wait_stopped(STOP_TIMEOUT_SECONDS)
            self.services.clear()

    def request_stop(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        """Block until a stop is requested (Ctrl-C)."""
        while not self._stop.wait(POLL_INTERVAL_SECONDS):
            pass

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # What users need ------------------------------------------------------------------------

    def metrics_urls(self) -> dict[str, str]:
        return {n: s.endpoints["metrics"] for n, s in self.services.items() if "metrics" in s.endpoints}

    def summary(self) -> str:
        settings = self.settings
        database = make_url(settings.effective_database_url).render_as_string(hide_password=True)
        topology = Topology(self.env, settings=settings)  # for make dev's certbot command line
        frontends = [n for n in self.services if n.startswith("frontend-")]
        validators = self.validator_names()
        started = ", ".join(self.started_here)
        lines = [
            "",
            (f"acme-ra lab is running: {len(frontends)} frontends behind HAProxy, {len(validators)} validators "
             f"and the signer, each its own process; {self.perspectives} remote network perspectives."),
            f"  ACME directory   {self.directory_url}  (HAProxy: TLS, round robin over the frontends)",
            f"  CA bundle        {self.ca_bundle}  (what ACME clients must trust)",
            f"  admin console    {self.admin_url}/  (and the admin API, {self.admin_url}/api/)",
            f"  upstream         {settings.upstream}: {settings.upstream_directory_url or 'lab CA'}"
            + (f" (EAB {settings.upstream_eab_kid})" if settings.upstream_eab_kid else ""),
            f"  DNS              {settings.dns_resolvers or 'the system resolvers'}"
            + (f" (pebble-challtestsrv, management http://127.0.0.1:{self.ports('dns-management')})"
               if self._uses_lab_dns() else ""),
            f"  database         {database}",
            f"  NATS             {mask_url(settings.nats_url)}" + (
                f"  (a user per service, passwords in {self.nats_auth_dir}/)" if self.nats_auth_dir else ""),
            f"  started here     {started}" + (f"; found running: {', '.join(self.found_running)}"
                                                if self.found_running else ""),
            "  metrics:",
        ]
        lines += [f"    {name:<13}  {url}" for name, url in self.metrics_urls().items()]
        lines += [
            f"  prometheus       {self.lab_dir / 'prometheus.yml'}  (scrape configuration for the above)",
            f"  logs             {self.log_dir}/",
            "",
            "Get a certificate for myhost.localhost (http-01; *.localhost resolves to this machine):",
            f"  {topology.certbot_command()}",
            "",
            "An admin token, to log in to the console or call the admin API (printed once):",
            f"  {self.admin_token_command()}",
            "",
            "A process that dies is restarted. Ctrl-C stops everything.",
            "",
        ]
        return "\n".join(lines)


# Command line -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``make lab``: start, print how to use it, restart what dies, stop on Ctrl-C."""
    get_settings()  # one line and exit 2 on bad configuration
    try:
        lab = ProcessLab(frontends=args.frontends, validators=args.validators, perspectives=args.perspectives,
                         echo=sys.stderr.buffer)
    except LaunchError as error:
        print(f"acme-ra lab: {error}", file=sys.stderr)
        return 1

    def wait() -> int:
        lab.wait()
        return 0

    return serve(lab, "acme-ra lab", wait)


def init(args: argparse.Namespace) -> int:
    """``python -m acme_ra_tools.lab init DIR``: docker-compose's init job writes the lab TLS material
    (``DIR/tls``) and the sealing secret every service shares (``DIR/secret.key``)."""
    directory = Path(args.directory)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    material = ensure_tls_material(directory / "tls", {"haproxy": names, "frontend": names, "pebble": names})
    secret = directory / "secret.key"
    if not secret.exists():
        write_private(secret, secrets.token_urlsafe(32).encode() + b"\n", 0o600)
    # The NATS users' passwords and the nats-server configuration naming them (compose's nats).
    nats_config = natsauth.write_server_config(directory / "nats")
    if args.shared:  # read by containers that run as other users (HAProxy, Pebble)
        for path in material.directory.iterdir():
            if path.name != "ca.key":
                path.chmod(0o644)
    print(f"lab TLS material in {material.directory} (CA {material.ca}), sealing secret {secret}, "
          f"NATS users {nats_config}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acme_ra_tools.lab", description=__doc__.splitlines()[0])
    parser.add_argument("--validators", type=int, default=int(os.environ.get("VALIDATORS") or DEFAULT_VALIDATORS),
                        help=f"validator processes (default {DEFAULT_VALIDATORS}, or $VALIDATORS)")
    parser.add_argument("--perspectives", type=int,
                        default=int(os.environ.get("PERSPECTIVES") or lab_perspectives.DEFAULT_PERSPECTIVES),
                        help="remote network perspectives the validators ask (default "
                             f"{lab_perspectives.DEFAULT_PERSPECTIVES}, or $PERSPECTIVES; 0: off)")
    parser.add_argument("--frontends", type=int, default=DEFAULT_FRONTENDS, choices=(1, 2),
                        help=f"frontend processes behind HAProxy (default {DEFAULT_FRONTENDS})")
    commands = parser.add_subparsers(dest="command")
    setup = commands.add_parser("init", help="write the lab TLS material and sealing secret to a directory")
    setup.add_argument("directory")
    setup.add_argument("--names", default=",".join(LOCAL_NAMES),
                       help="comma list of the names every server certificate carries")
    setup.add_argument("--shared", action="store_true",
                       help="TLS keys readable by every user (containers that run as other users)")
    args = parser.parse_args(argv)
    if args.command == "init":
        return init(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
