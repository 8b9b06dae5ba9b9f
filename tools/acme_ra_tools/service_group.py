"""Processes kept running, as docker compose's ``restart: unless-stopped``: what ``make lab``'s
:class:`~acme_ra_tools.lab.ProcessLab` builds on.

A :class:`ServiceGroup` holds named :class:`Service` s (children of :mod:`acme_ra_tools.supervisor`
with their log files). Its subclass says what to start (:meth:`ServiceGroup.start`); the group
spawns each, waits until it answers, then supervises: a service that dies starts again after a
back-off, doubled from :data:`RESTART_FIRST_DELAY_SECONDS` up to :data:`RESTART_MAX_DELAY_SECONDS`.
:meth:`ServiceGroup.stop` stops the services a group of names at a time (:attr:`ServiceGroup.stop_order`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from acme_ra_tools.supervisor import POLL_INTERVAL_SECONDS, STOP_TIMEOUT_SECONDS, Child, run_step, wait_until

# Restart back-off of a process that died: first delay, doubled up to the maximum (seconds);
# a process that ran this long before dying starts again from the first delay.
RESTART_FIRST_DELAY_SECONDS = 1.0
RESTART_MAX_DELAY_SECONDS = 30.0
RESTART_RESET_AFTER_SECONDS = 60.0


@dataclass
class Service:
    """A process the group keeps running: restarted with back-off when it dies."""

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


class ServiceGroup:
    """Named services, restarted when they die. Each writes ``log_dir/<name>.log`` (and, with
    ``Service.echo``, to ``echo`` too); a start-up wait gives up after ``ready_timeout`` seconds."""

    # What the group's messages start with.
    label = "services"
    # Name prefixes in the order stop() stops them, a group at once; what matches none goes last.
    stop_order: tuple[str, ...] = ()

    def __init__(self, log_dir: Path, *, echo: IO[bytes] | None, ready_timeout: float) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.ready_timeout = ready_timeout
        self.services: dict[str, Service] = {}
        self._lock = threading.RLock()  # held while services are added, restarted or stopped
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        """Start the services and supervise them (the subclass knows which)."""
        raise NotImplementedError

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

    def _run_step(self, step: str, argv: list[str], env: Mapping[str, str]) -> None:
        """A start-up step that must finish (migrations, bootstrap), logged as ``<step>.log``."""
        child = Child(step, argv, env, self.log_dir / f"{step}.log", self.echo)
        run_step(child, timeout=self.ready_timeout, stopping=self._stop.is_set)

    def _start_supervising(self) -> None:
        self._supervisor = threading.Thread(target=self._supervise, name=f"{self.label} supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        """Restart what dies, with back-off."""
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
        print(f"{self.label}: {message}", file=sys.stderr, flush=True)

    # Stop -----------------------------------------------------------------------------------

    @staticmethod
    def _stop_services(services: Iterable[Service]) -> None:
        """SIGTERM them all at once, then wait for each (SIGKILL what does not exit)."""
        children = [service.child for service in services if service.child is not None]
        for child in children:
            child.terminate()
        for child in children:
            child.wait_stopped(STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """Stop supervising, then stop the services a group at a time (:attr:`stop_order`)."""
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(STOP_TIMEOUT_SECONDS)
        with self._lock:
            left = dict(self.services)
            for prefix in self.stop_order:
                self._stop_services([left.pop(name) for name in list(left) if name.startswith(prefix)])
            self._stop_services(left.values())
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
