"""`make lab`: the docker-compose topology as processes on one machine, without Docker.

What runs (the same ``ACME_RA_*`` variables as docker-compose.yml and ``make dev``):

- this machine's PostgreSQL (``ACME_RA_DATABASE_URL``; default
  :data:`~acme_ra_tools.lab_infrastructure.DEFAULT_DATABASE_URL`, created when missing) and a
  nats-server with JetStream (started unless ``ACME_RA_NATS_URL``);
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

``python -m acme_ra_tools.lab init DIR`` writes the same TLS material, the sealing secret and the
NATS users for docker-compose's init job (lab_init.py).

The lab's pieces: where everything listens and the servers around acme-ra (HAProxy, Pebble,
pebble-challtestsrv, nats-server, PostgreSQL) are in lab_infrastructure.py; the restart of what
dies in service_group.py; the TLS CA in lab_tls.py; the perspectives in lab_perspectives.py.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url

from acme_ra import natsauth
from acme_ra.config import ENV_PREFIX, Settings, get_settings
from acme_ra.redaction import mask_url
from acme_ra_tools import lab_init, lab_perspectives
from acme_ra_tools.dev import Topology
from acme_ra_tools.lab_infrastructure import (
    DEFAULT_DATABASE_URL,
    INSTALL_HINT,
    PEBBLE_EAB_HMAC_KEY,
    PEBBLE_EAB_KID,
    LabPorts,
    challtestsrv_service,
    ensure_postgres_database,
    haproxy_binary,
    haproxy_service,
    nats_service,
    pebble_service,
    write_prometheus_config,
)
from acme_ra_tools.lab_tls import LOCAL_NAMES, TlsMaterial, ensure_tls_material, write_private
from acme_ra_tools.service_group import Service, ServiceGroup
from acme_ra_tools.supervisor import (
    LAB_DEFAULTS,
    READY_TIMEOUT_SECONDS,
    ClientAccess,
    LaunchError,
    NotReady,
    free_port,
    http_ok,
    port_is_free,
    serve,
    settings_from_env,
)

# Validators started when --validators is not given (make lab VALIDATORS=N).
DEFAULT_VALIDATORS = 2
# Frontends behind the load balancer.
DEFAULT_FRONTENDS = 2


class ProcessLab(ServiceGroup, ClientAccess):
    """The lab's processes, kept running (:class:`~acme_ra_tools.service_group.ServiceGroup`).
    ``env`` is every child's environment (default: this process's); ``ports`` where each listens
    (default: the usual ports)."""

    label = "acme-ra lab"
    # acme-ra's services, then the servers they use (each group all at once).
    stop_order = ("frontend", "admin", "validator", "perspective", "signer", "haproxy", "pebble", "challtestsrv",
                  "nats-server")

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
        self.env = self._lab_env(dict(os.environ if env is None else env))
        self.state_dir = Path(self.env[ENV_PREFIX + "STATE_DIR"])
        super().__init__(self.state_dir / "logs", echo=echo, ready_timeout=ready_timeout)
        self.lab_dir = self.state_dir / "lab"
        self.tls = TlsMaterial(self.lab_dir / "tls")
        # The files exist before the settings are read: the settings check that they do.
        self._write_tls_material()
        self._new_secret = self._write_secret_key()
        self.settings = settings_from_env(self.env)
        # The users and passwords of the nats-server the lab starts (acme_ra.natsauth); None when
        # it uses a NATS found running (ACME_RA_NATS_URL: the services' ACME_RA_NATS_* say how).
        self.nats_auth_dir: Path | None = None
        self.started_here: list[str] = []  # infrastructure the lab started (vs found running)
        self.found_running: list[str] = []

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
            self._run_step("migrate", [sys.executable, "-m", "acme_ra_tools.cli", "migrate"], self.env)
            self._run_step("bootstrap", [sys.executable, "-m", "acme_ra_signer", "bootstrap"], self.env)
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
            self._start_supervising()
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
        return lab_init.ensure_secret_key(Path(self.env[ENV_PREFIX + "SECRET_KEY_FILE"]))

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
        self._start_infrastructure(nats_service(port, config, self.state_dir / "nats", dict(self.env)))
        self.env[ENV_PREFIX + "NATS_URL"] = f"nats://127.0.0.1:{port}"
        self.settings = settings_from_env(self.env)

    def _start_challtestsrv(self) -> None:
        dns = self.ports("dns")
        self._start_infrastructure(challtestsrv_service(dns, self.ports("dns-management")),
                                   found=f"DNS 127.0.0.1:{dns} (already running)")

    def _start_pebble(self) -> None:
        directory = self.settings.upstream_directory_url
        service = pebble_service(self.ports("pebble"), self.ports("pebble-management"), dns=self.ports("dns"),
                                 directory=directory, ca_bundle=self.settings.upstream_ca_bundle, tls=self.tls,
                                 config=self.lab_dir / "pebble-config.json")
        self._start_infrastructure(service, found=f"Pebble {directory} (already running)")

    def _start_infrastructure(self, service: Service | None, found: str = "") -> None:
        """Start a server the services use and wait until it answers; ``service`` is None when
        one runs already, which ``found`` describes."""
        if service is None:
            self.found_running.append(found)
            return
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
        service = lab_perspectives.perspective_service(number, self.ports(name), self._service_env)
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

    def _frontends_use_lab_tls(self) -> bool:
        return self.settings.tls_cert_file == self.tls.cert("frontend")

    def _frontend_context(self) -> ssl.SSLContext:
        if self._frontends_use_lab_tls():
            return self._client_context()
        context = ssl.create_default_context()  # the operator's own certificate: the system's roots
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def _add_haproxy(self) -> None:
        frontends = [self.ports(name) for name in self.services if name.startswith("frontend-")]
        frontend_ca = self.tls.ca if self._frontends_use_lab_tls() else Path("/etc/ssl/certs/ca-certificates.crt")
        self._start_infrastructure(haproxy_service(
            self.lb_port, self.ports("haproxy-stats"), frontends, tls=self.tls, frontend_ca=frontend_ca,
            ready=lambda: http_ok(self.directory_url, self._client_context())))

    def _write_prometheus_config(self) -> Path:
        """STATE_DIR/lab/prometheus.yml, for every /metrics of the lab."""
        return write_prometheus_config(self.lab_dir / "prometheus.yml", self.services.values())

    def validator_names(self) -> list[str]:
        return sorted((n for n in self.services if n.startswith("validator-")), key=lambda n: int(n.split("-")[1]))

    def scale_validators(self, count: int) -> None:
        """Run exactly ``count`` validators (``docker compose up --scale validator=N``)."""
        with self._lock:
            names = self.validator_names()
            self._stop_services([self.services.pop(name) for name in names[count:]])
            added = [self._add_validator(number) for number in range(len(names) + 1, count + 1)]
            for service in added:
                self._spawn(service)
        for service in added:
            self._wait_ready(service)
        self.validators = count
        self._write_prometheus_config()

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
    lab_init.add_arguments(commands.add_parser(
        "init", help="write the lab TLS material, sealing secret and NATS users to a directory (docker-compose)"))
    args = parser.parse_args(argv)
    if args.command == "init":
        return lab_init.init(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
