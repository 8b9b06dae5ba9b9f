"""`make dev`: the whole of acme-ra on one machine, each service its own process.

Start-up, in order: settings; the state dir; an embedded nats-server with JetStream and a user
per service (acme_ra.natsauth; unless ``ACME_RA_NATS_URL`` is set); the database migrations
(``acme-ra migrate``); the signer's bootstrap (lab CA, the frontend's TLS certificate,
``STATE_DIR/ca-bundle.pem``); the signer, validator, frontend and admin service; then a wait until
each is ready. Every child's output goes to the terminal and to ``STATE_DIR/logs/<name>.log``.
Ctrl-C or SIGTERM stops everything; a child that dies on its own stops everything too, with a
non-zero exit. The processes are run by :mod:`acme_ra_tools.supervisor`.

The integration tests start the same :class:`Topology` with their own environment and ports,
so they exercise what ``make dev`` runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import IO, Self

import httpx
from sqlalchemy.engine import make_url

from acme_ra import natsauth
from acme_ra.config import ENV_PREFIX, Settings, get_settings, http_base
from acme_ra.redaction import mask_url
from acme_ra_tools.supervisor import (
    LAB_DEFAULTS,
    POLL_INTERVAL_SECONDS,
    READY_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    Child,
    ClientAccess,
    free_port,
    nats_ready,
    nats_server_binary,
    port_is_free,
    run_step,
    serve,
    settings_from_env,
    wait_until,
)

# The port the embedded nats-server prefers (the NATS default); any free port when it is taken.
DEFAULT_NATS_PORT = 4222
# The services, in start order: the signer first (it owns the CA), then the ACME frontend; the
# admin API and console (acme_ra_admin) last.
SERVICES = ("signer", "validator", "frontend", "admin")
# The lab name in the printed certbot command: the validator resolves *.localhost to loopback.
LAB_NAME = "myhost.localhost"


class Topology(ClientAccess):
    """nats-server (embedded unless configured), migrations, bootstrap, and the four services.

    ``env`` is the environment of every child (default: this process's) on top of
    :data:`LAB_DEFAULTS`; the settings are read from it exactly as the services read them.
    ``echo`` receives the children's output as well as their log files (``make dev``: the
    terminal; tests: nothing).
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        settings: Settings | None = None,
        nats_port: int | None = None,
        echo: IO[bytes] | None = None,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
    ) -> None:
        self.env = LAB_DEFAULTS | dict(os.environ if env is None else env)
        self.settings = settings if settings is not None else settings_from_env(self.env)
        self.state_dir = self.settings.state_dir.resolve()
        self.log_dir = self.state_dir / "logs"
        self.nats_port = nats_port
        self.echo = echo
        self.ready_timeout = ready_timeout
        self.nats: Child | None = None
        self.nats_url = self.settings.nats_url
        # The embedded nats-server's users and passwords (acme_ra.natsauth): each service connects
        # as its own user; None with an external NATS (the services' ACME_RA_NATS_* say how).
        self.nats_auth_dir: Path | None = None
        self.services: dict[str, Child] = {}
        self._stop_requested = False  # a plain flag: set from signal handlers

    # What clients and operators need (with ClientAccess's directory_url, ca_bundle) ---------

    @property
    def embedded_nats(self) -> bool:
        return not self.settings.nats_url

    @property
    def child_env(self) -> dict[str, str]:
        env = dict(self.env)
        env[ENV_PREFIX + "STATE_DIR"] = str(self.state_dir)
        env[ENV_PREFIX + "NATS_URL"] = self.nats_url
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def service_env(self, name: str) -> dict[str, str]:
        """A service's environment: with the embedded nats-server, its own NATS user and password."""
        env = self.child_env
        if self.nats_auth_dir is not None:
            env.update(natsauth.service_env(self.nats_auth_dir, name))
        return env

    @property
    def http01_needs_root(self) -> bool:
        """certbot --standalone binds the validation port itself: below 1024 that takes root."""
        return self.settings.validation_http_port < 1024 and hasattr(os, "geteuid") and os.geteuid() != 0

    def certbot_command(self, name: str = LAB_NAME) -> str:
        """A certbot command line that gets a certificate for ``name`` with http-01, as printed."""
        certbot = Path(sys.executable).parent / "certbot"
        work = self.state_dir / "certbot"
        port = self.settings.validation_http_port
        args = [
            str(certbot) if certbot.is_file() else "certbot",
            "certonly", "--standalone", "--non-interactive",
            "-d", name,
            "--server", self.directory_url,
            "--http-01-port", str(port),
            "--agree-tos", "--register-unsafely-without-email",
            "--config-dir", str(work / "config"),
            "--work-dir", str(work / "work"),
            "--logs-dir", str(work / "logs"),
        ]
        command = " ".join(shlex.quote(arg) for arg in args)
        trust = f"REQUESTS_CA_BUNDLE={shlex.quote(str(self.ca_bundle))}"
        return f"sudo env {trust} {command}" if self.http01_needs_root else f"{trust} {command}"

    def summary(self) -> str:
        database = make_url(self.settings.effective_database_url).render_as_string(hide_password=True)
        nats = f"{mask_url(self.nats_url)} ({'embedded' if self.embedded_nats else 'external'})"
        if self.nats_auth_dir is not None:
            nats += f"; a user per service, passwords in {self.nats_auth_dir}/"
        upstream: str = self.settings.upstream
        if upstream == "lab":
            upstream = "lab CA (for development and tests only, never for production)"
        lines = [
            "",
            "acme-ra is running: signer, validator and frontend, each its own process.",
            f"  upstream         {upstream}",
            f"  ACME directory   {self.directory_url}",
            f"  CA bundle        {self.ca_bundle}  (what ACME clients must trust)",
            (f"  admin console    {self.settings.admin_base_url}/  (log in with a token from"
            " `acme-ra admin-token create`)"),
            f"  database         {database}",
            f"  NATS             {nats}",
            f"  logs             {self.log_dir}/",
            (f"  validation       may reach {self.settings.validation_allow_networks or 'no private network'}"
            " (ACME_RA_VALIDATION_ALLOW_NETWORKS)"),
            "",
            f"Get a certificate for {LAB_NAME} (http-01; *.localhost resolves to this machine):",
            f"  {self.certbot_command()}",
        ]
        if self.http01_needs_root:
            lines.append(
                f"  (port {self.settings.validation_http_port} needs root; for a port that does not, "
                "restart with ACME_RA_VALIDATION_HTTP_PORT=8080 make dev)"
            )
        lines += ["", "Ctrl-C stops everything.", ""]
        return "\n".join(lines)

    # Lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything and wait until it is ready; on failure, stop what started and raise."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(exist_ok=True)
            if self.embedded_nats:
                self._start_nats()
            self._run_step("migrate", [sys.executable, "-m", "acme_ra_tools.cli", "migrate"])
            self._run_step("bootstrap", [sys.executable, "-m", "acme_ra_signer", "bootstrap"], log="signer")
            for name in SERVICES:
                self.start_service(name)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def request_stop(self) -> None:
        """Ask a running :meth:`start` or :meth:`watch` to return (safe from a signal handler)."""
        self._stop_requested = True

    def watch(self) -> Child | None:
        """Block until a service dies (returned) or a stop is requested (None)."""
        while not self._stop_requested:
            for child in self._children():
                if child.returncode is not None:
                    return child
            time.sleep(POLL_INTERVAL_SECONDS)
        return None

    def stop(self) -> None:
        """SIGTERM the services (all at once), then nats-server; SIGKILL what does not exit."""
        services = list(self.services.values())
        for child in services:
            child.terminate()
        for child in services:
            child.wait_stopped(STOP_TIMEOUT_SECONDS)
        self.services.clear()
        if self.nats is not None:
            self.nats.terminate()
            self.nats.wait_stopped(STOP_TIMEOUT_SECONDS)
            self.nats = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Steps ----------------------------------------------------------------------------------

    def start_service(self, name: str) -> Child:
        """Start (or start again, after it died) one service, as its own NATS user."""
        child = self._spawn(name, [sys.executable, "-m", f"acme_ra_{name}"], env=self.service_env(name))
        self.services[name] = child
        return child

    def _children(self) -> list[Child]:
        return ([self.nats] if self.nats is not None else []) + list(self.services.values())

    def _spawn(self, name: str, argv: list[str], log: str | None = None,
               env: Mapping[str, str] | None = None) -> Child:
        return Child(name, argv, self.child_env if env is None else env, self.log_dir / f"{log or name}.log",
                     self.echo)

    def _start_nats(self) -> None:
        port = self.nats_port
        if port is None:
            port = DEFAULT_NATS_PORT if port_is_free(DEFAULT_NATS_PORT) else free_port()
        self.nats_auth_dir = self.state_dir / natsauth.AUTH_DIR_NAME
        config = natsauth.write_server_config(self.nats_auth_dir)
        argv = [nats_server_binary(), "-c", str(config), "-js", "-sd", str(self.state_dir / "nats"),
                "-a", "127.0.0.1", "-p", str(port)]
        self.nats = Child("nats-server", argv, self.env, self.log_dir / "nats-server.log", echo=None)
        self.nats_url = f"nats://127.0.0.1:{port}"
        self._wait_until("nats-server", lambda: nats_ready(port), [self.nats])

    def _run_step(self, step: str, argv: list[str], log: str | None = None) -> None:
        run_step(self._spawn(step, argv, log), timeout=self.ready_timeout, stopping=lambda: self._stop_requested)

    def _wait_ready(self) -> None:
        services = list(self.services.values())
        for name in ("signer", "validator", "admin"):
            url = (self.settings.admin_base_url if name == "admin" else
                   http_base(getattr(self.settings, f"{name}_listen"))) + "/readyz"
            # verify=False: a readiness probe of the process just started, on its own listener
            # (an admin certificate may name the host, not 127.0.0.1); it sends nothing secret.
            with httpx.Client(trust_env=False, timeout=2, verify=False) as client:
                self._wait_until(name, partial(_answers_200, client, url), services)
        context = ssl.create_default_context()  # the system's roots (a real upstream's chain)
        if self.settings.tls_cert_file is None and self.ca_bundle.exists():
            context.load_verify_locations(cafile=str(self.ca_bundle))
            # With an ACME upstream the bundle holds the issuers the upstream sent (an
            # intermediate, without its root): trust it as an anchor of its own.
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        with httpx.Client(trust_env=False, timeout=2, verify=context) as client:
            self._wait_until(
                "frontend", lambda: client.get(self.directory_url).status_code == 200, services
            )

    def _wait_until(self, what: str, ready: Callable[[], bool], children: list[Child]) -> None:
        wait_until(what, ready, children, timeout=self.ready_timeout, stopping=lambda: self._stop_requested)


def _answers_200(client: httpx.Client, url: str) -> bool:
    return client.get(url).status_code == 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats-port",
        type=int,
        default=None,
        help=f"port of the embedded nats-server (default {DEFAULT_NATS_PORT}, or any free port if taken)",
    )


def run(args: argparse.Namespace) -> int:
    """``make dev``: start, print how to use it, wait for Ctrl-C or a death, stop."""
    for name, value in LAB_DEFAULTS.items():
        os.environ.setdefault(name, value)
    settings = get_settings()  # one line and exit 2 on bad configuration
    topology = Topology(settings=settings, nats_port=args.nats_port, echo=sys.stderr.buffer)

    def watch() -> int:
        dead = topology.watch()
        if dead is None:
            return 0
        print(
            f"acme-ra: {dead.name} exited unexpectedly with status {dead.returncode}; "
            f"stopping everything (log: {dead.log_path})",
            file=sys.stderr,
            flush=True,
        )
        return 1

    return serve(topology, "acme-ra", watch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acme-ra dev", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
