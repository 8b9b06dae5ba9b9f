"""Several frontend processes on one listening socket (ACME_RA_FRONTEND_WORKERS).

One Python process runs one event loop on one core. On a machine with more cores, the frontend
forks workers after binding the port: each worker has its own event loop, database pool and NATS
connection, and the kernel hands each new connection to whichever worker accepts it first. Every
worker is a complete frontend (nonces are checked against the shared key and database, events
reach every worker, the reconciler is de-duplicated by JetStream), exactly as replicas behind a
load balancer are, so nothing else changes.

The parent only supervises: it forwards SIGTERM/SIGINT to the workers (each drains as a single
frontend does), serves /metrics for all of them (prometheus_client's multiprocess mode, which
must be chosen before prometheus_client is imported: ``prepare_metrics_dir``), and stops every
worker and exits non-zero when one of them dies on its own, so that the supervisor above
(make dev, Docker, Kubernetes) restarts the frontend as a whole. A worker dies with its parent
(PR_SET_PDEATHSIG), even when the parent is killed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from acme_ra.parent_death import die_with_parent

log = logging.getLogger("acme_ra.frontend.workers")

# How long the parent waits for the workers after forwarding a stop signal (seconds); longer than
# a worker's drain (ACME_RA_SHUTDOWN_DELAY_SECONDS + uvicorn's graceful shutdown).
STOP_TIMEOUT_SECONDS = 90.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir() -> Path:
    """A fresh directory for the workers' metric files, named in the environment before
    prometheus_client is first imported (it picks its value class at import)."""
    assert "prometheus_client" not in sys.modules, "prometheus_client imported before the multiprocess set-up"
    path = Path(tempfile.mkdtemp(prefix="acme-ra-frontend-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def bind(host: str, port: int, backlog: int = 2048, what: str | None = None) -> socket.socket:
    """The listening socket every worker accepts on; one that cannot be bound is one line
    (naming ``what``, e.g. the setting) and exit status 1."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        print(f"acme-ra: cannot listen on {what or f'{host}:{port}'}: {error.strerror or error}", file=sys.stderr)
        raise SystemExit(1) from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def run_workers(count: int, sock: socket.socket, serve: Callable[[socket.socket], None],
                metrics_dir: Path | None, after_fork: Callable[[], None]) -> int:
    """Fork ``count`` workers running ``serve(sock)``, then run ``after_fork()`` in the parent
    (threads, such as the metrics server's, must start after the forks); supervise the workers;
    the exit status."""
    pids: dict[int, int] = {}  # pid -> worker number
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in pids:
            _kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for number in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            die_with_parent()
            code = 0
            try:
                serve(sock)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # reported; the worker's exit status says it
                log.exception("frontend worker %d failed", number)
                code = 1
            finally:
                logging.shutdown()
            os._exit(code)
        pids[pid] = number
    sock.close()  # the workers hold it
    after_fork()
    log.info("frontend workers started", extra={"workers": count, "pids": sorted(pids)})

    status = 0
    deadline: float | None = None
    while pids:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if stopping and deadline is None:
                deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                for left in pids:
                    _kill(left, signal.SIGKILL)
                deadline = None
            time.sleep(0.1)
            continue
        number = pids.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        _mark_dead(pid, metrics_dir)
        if not stopping:
            log.error("frontend worker %d (pid %d) exited with %d; stopping the others", number, pid, code)
            status = code if code > 0 else 1
            forward(signal.SIGTERM, None)
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _mark_dead(pid: int, metrics_dir: Path | None) -> None:
    if metrics_dir is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]
