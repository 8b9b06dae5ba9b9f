"""A PostgreSQL cluster of the tests' own: Debian's ``initdb``/``pg_ctl`` in a temp dir, trust
authentication on 127.0.0.1 and a free port, owned by the ``postgres`` user when we are root
(PostgreSQL refuses to run as root).

The chaos tests start one because they stop and restart it, or two: a primary and a streaming
standby of it (:meth:`PostgresServer.standby`, ``pg_basebackup -R``) whose primary they kill
(:meth:`PostgresServer.kill`) and which they promote (:meth:`PostgresServer.promote`). The rest of the suite starts one
(:func:`throwaway_cluster`, once per run) when it needs PostgreSQL and none is configured, or when
``ACME_RA_TEST_DATABASE_URL`` names a server nothing answers on: ``make test`` needs no database
server running on the machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url

from acme_ra_tools.supervisor import free_port

# Where initdb and pg_ctl are: ACME_RA_TEST_POSTGRES_BIN, else the newest /usr/lib/postgresql/<N>/bin.
POSTGRES_BIN_ENV = "ACME_RA_TEST_POSTGRES_BIN"
POSTGRES_INSTALL_HINT = "apt-get install -y postgresql  (initdb and pg_ctl in /usr/lib/postgresql/<version>/bin)"
# How long initdb, or a start or stop, may take (seconds).
START_TIMEOUT_SECONDS = 60.0
# How long a configured server has to accept a TCP connection before it counts as not running.
REACHABLE_TIMEOUT_SECONDS = 1.0


def postgres_bin() -> Path:
    """The directory of initdb and pg_ctl; fails with the install line when there is none."""
    configured = os.environ.get(POSTGRES_BIN_ENV)
    if configured:
        candidates = [Path(configured)]
    else:
        versions = Path("/usr/lib/postgresql").glob("*/bin")
        candidates = sorted(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)], reverse=True)
    for candidate in candidates:
        if all(os.access(candidate / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return candidate
    where = configured or "/usr/lib/postgresql/*/bin"
    raise RuntimeError(f"initdb and pg_ctl not found in {where}: the tests need them. {POSTGRES_INSTALL_HINT}")


def reachable(url: str) -> bool:
    """Whether something accepts TCP connections at the URL's host and port."""
    parsed = make_url(url)
    try:
        socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432),
                                 timeout=REACHABLE_TIMEOUT_SECONDS).close()
        return True
    except OSError:
        return False


class PostgresServer:
    """A PostgreSQL instance in a temp dir, on 127.0.0.1:``port``; ``remove()`` deletes it."""

    def __init__(self, prefix: str = "acme-ra-test-pg-", settings: Mapping[str, str] | None = None,
                 *, initialize: bool = True) -> None:
        """``initialize=False``: an empty data directory (``standby`` fills it)."""
        self.bin = postgres_bin()
        self.settings = dict(settings or {})  # more server settings (-c name=value)
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        if initialize:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.starts = 0

    def _run(self, tool: str, *args: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
        argv = [*self._as_postgres, str(self.bin / tool), *args]
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        ) + "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        self.starts += 1

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are terminated, a clean shutdown; ``immediate``: as if it crashed."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def begin_smart_shutdown(self) -> None:
        """``pg_ctl stop -m smart`` without waiting: new connections are refused ("the database
        system is shutting down") while the sessions already open go on."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "smart", "-W", "stop")

    def standby(self, prefix: str = "acme-ra-test-pg-standby-", settings: Mapping[str, str] | None = None,
                ) -> PostgresServer:
        """A streaming standby of this running server, not started: ``pg_basebackup -R`` (a
        base backup, WAL streamed, ``primary_conninfo`` and ``standby.signal`` written) into a new
        temp dir, with ``settings`` (default: this server's) and a port of its own. initdb's
        trust rules let 127.0.0.1 replicate."""
        replica = PostgresServer(prefix, self.settings if settings is None else settings, initialize=False)
        try:
            replica._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                         "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast", "--no-sync")
        except BaseException:
            replica.remove()
            raise
        return replica

    def in_recovery(self) -> bool:
        """Whether the server is a standby (``pg_is_in_recovery()``), through psql's own client."""
        done = subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-At", "-c", "SELECT pg_is_in_recovery()"], check=True, capture_output=True, text=True,
                              timeout=START_TIMEOUT_SECONDS)
        return done.stdout.strip() == "t"

    def promote(self) -> None:
        """``pg_ctl promote``, waiting until the standby takes writes."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def kill(self) -> None:
        """SIGKILL to the postmaster and every process of it, at once: the machine is gone (no
        shutdown, sessions cut). The data directory stays (``remove`` deletes it)."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        postmaster = int(pid_file.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGSTOP)  # forks no backend while its children are listed
        for pid in [postmaster, *_children(postmaster)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def psql_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (a postmaster's backends and workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


_throwaway: PostgresServer | None = None


def throwaway_cluster() -> PostgresServer:
    """The run's own PostgreSQL, started on first use and removed when the run ends."""
    global _throwaway
    if _throwaway is None:
        server = PostgresServer(prefix="acme-ra-throwaway-pg-")
        try:
            server.start()
        except BaseException:
            server.remove()
            raise
        _throwaway = server
        atexit.register(remove_throwaway_cluster)
    return _throwaway


def running_throwaway_cluster() -> PostgresServer | None:
    return _throwaway


def remove_throwaway_cluster() -> None:
    global _throwaway
    if _throwaway is not None:
        server, _throwaway = _throwaway, None
        server.remove()
