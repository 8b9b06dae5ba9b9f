"""What the benchmark measures, each started fresh on free ports and stopped afterwards:

- ``AcmeRaTarget(upstream="lab")``    (a) acme-ra with the lab CA;
- ``AcmeRaTarget(upstream="pebble")`` (b) acme-ra whose signer gets certificates from a Pebble
  (EAB required, every upstream authorization valid at once: acme-ra already validated);
- ``PebbleTarget``                     (c) Pebble alone, validating http-01 for real against the
  generator's server (``httpPort``), its DNS answered by pebble-challtestsrv (every name: 127.0.0.1).

acme-ra runs as ``make dev`` runs it (``acme_ra_tools.dev.Topology``: its own nats-server from
.venv, migrations, bootstrap, the three services) on a database created for the run and dropped
afterwards. Every Pebble gets ``PEBBLE_VA_NOSLEEP=1`` and ``PEBBLE_WFE_NONCEREJECT=0``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from acme_ra.config import ENV_PREFIX, Settings
from acme_ra_tools.dev import Topology
from acme_ra_tools.lab_tls import TlsMaterial, ensure_tls_material
from acme_ra_tools.supervisor import STOP_TIMEOUT_SECONDS, Child, free_port
from bench.load import process_tree

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"
INSTALL_HINT = "apt-get install -y pebble"
LOCAL_NAMES = ["localhost", "127.0.0.1", "::1"]
# How long Pebble and challtestsrv may take to listen (seconds).
START_TIMEOUT_SECONDS = 20.0
# The EAB pair of the Pebbles started here (any value would do: both sides are ours).
PEBBLE_EAB_KID = "bench-kid"
# PEBBLE_AUTHZREUSE=0: every name is new, so reuse never applies, but its look-up scans every
# authorization under Pebble's store lock while validations update them: Pebble 2.4 hung (every
# request unanswered from some moment on) in 4 of about 50 runs on 2026-12-07, 3 of them while a purge
# loaded the machine. A --baseline-ref older than this line runs its own Pebble settings.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
# Names the generator orders: acme-ra's validator resolves *.localhost to loopback itself;
# Pebble asks challtestsrv, which answers 127.0.0.1 for every name.
ACME_RA_NAME_SUFFIX = "bench.localhost"
PEBBLE_NAME_SUFFIX = "bench.example.com"


class TargetError(RuntimeError):
    """A target did not start; the message says why."""


def _wait_listening(port: int, child: Child, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.returncode is not None:
            raise TargetError(f"{what} exited at start\n{child.describe_failure()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TargetError(f"{what} did not listen on {port} within {START_TIMEOUT_SECONDS:.0f}s")


def _require(binary: str) -> None:
    if not os.access(binary, os.X_OK):
        raise TargetError(f"{binary} is missing: {INSTALL_HINT}")


# PostgreSQL ---------------------------------------------------------------------------------


def _execute(admin_url: str, statement: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(admin_url, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


class BenchDatabase:
    """A database of its own for one target: PostgreSQL (created and dropped through the
    server's ``postgres`` database) or a SQLite file in the target's directory."""

    def __init__(self, server_url: str | None, directory: Path, template: str | None = None) -> None:
        """``template``: a database to start from (its name on the server, or a SQLite file)."""
        self.server_url = server_url
        self.directory = directory
        self.template = template
        self.name: str | None = None
        self.url = ""

    def create(self) -> str:
        if not self.server_url:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self.template:
                shutil.copyfile(self.template, self.directory / "acme-ra.db")
            self.url = f"sqlite+aiosqlite:///{(self.directory / 'acme-ra.db').resolve()}"
            return self.url
        base = make_url(self.server_url)
        if base.drivername != "postgresql+asyncpg":
            raise TargetError(f"--database-url must be postgresql+asyncpg://..., got {base.drivername}")
        self.name = f"acme_ra_bench_{secrets.token_hex(4)}"
        admin = base.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        try:
            copy = f' TEMPLATE "{self.template}"' if self.template else ""
            _execute(admin, f'CREATE DATABASE "{self.name}"{copy}')
        except Exception as error:  # noqa: BLE001 - any failure: say which server and why
            shown = base.render_as_string(hide_password=True)
            raise TargetError(f"cannot create a database on {shown}: {type(error).__name__}: {error}") from None
        self.url = base.set(database=self.name).render_as_string(hide_password=False)
        return self.url

    def drop(self) -> None:
        if self.server_url and self.name:
            base = make_url(self.server_url)
            admin = base.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
            _execute(admin, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.name = None

    @property
    def backend(self) -> str:
        return "postgresql" if self.server_url else "sqlite"


# Pebble -------------------------------------------------------------------------------------


class PebbleProcess:
    """One Pebble (and, when it validates for real, the challtestsrv it asks for DNS)."""

    def __init__(self, workdir: Path, tls: TlsMaterial, *, always_valid: bool, http01_port: int,
                 dns_server: str | None = None) -> None:
        """``dns_server``: the resolver Pebble's VA asks (``host:port``), in place of challtestsrv."""
        _require(PEBBLE)
        self.dns_server = dns_server
        self.workdir = workdir
        self.tls = tls
        self.always_valid = always_valid
        self.http01_port = http01_port
        self.port = free_port()
        self.management_port = free_port()
        self.eab_hmac_key = secrets.token_urlsafe(32)
        self.dns_port: int | None = None
        self.children: list[Child] = []

    @property
    def directory_url(self) -> str:
        return f"https://localhost:{self.port}/dir"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [PEBBLE, "-config", str(self.workdir / "pebble-config.json"), "-strict=false"]
        if not self.always_valid and self.dns_server:
            argv += ["-dnsserver", self.dns_server]
        elif not self.always_valid:
            _require(CHALLTESTSRV)
            self.dns_port = free_port()
            management = free_port()
            dns = Child("challtestsrv", [
                CHALLTESTSRV, "-dns01", f"127.0.0.1:{self.dns_port}", "-management", f"127.0.0.1:{management}",
                "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            ], {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, self.workdir / "challtestsrv.log", None)
            self.children.append(dns)
            _wait_listening(management, dns, "pebble-challtestsrv")
            argv += ["-dnsserver", f"127.0.0.1:{self.dns_port}"]
        (self.workdir / "pebble-config.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.tls.cert("pebble")),
            "privateKey": str(self.tls.key("pebble")),
            "httpPort": self.http01_port,  # where its VA fetches http-01: the generator's server
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": True,
            "externalAccountMACKeys": {PEBBLE_EAB_KID: self.eab_hmac_key},
        }}, indent=2))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **PEBBLE_ENV}
        if self.always_valid:
            env["PEBBLE_VA_ALWAYS_VALID"] = "1"
        pebble = Child("pebble", argv, env, self.workdir / "pebble.log", None)
        self.children.append(pebble)
        _wait_listening(self.port, pebble, "pebble")

    @property
    def pid(self) -> int | None:
        pebble = next((c for c in self.children if c.name == "pebble"), None)
        return pebble.process.pid if pebble else None

    def stop(self) -> None:
        for child in reversed(self.children):
            child.terminate()
            child.wait_stopped(STOP_TIMEOUT_SECONDS)
        self.children.clear()


# Targets ------------------------------------------------------------------------------------


class Target:
    """What the runner needs of a target."""

    key = ""
    label = ""
    directory_url = ""
    ca_bundle: Path | None = None
    name_suffix = ACME_RA_NAME_SUFFIX
    eab: tuple[str, str] | None = None
    log_dir: Path | None = None
    # Started afresh before each concurrency level (see PebbleTarget).
    restart_per_level = False

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def service_pids(self) -> dict[str, int]:
        """The processes whose peak RSS is reported, by name."""
        raise NotImplementedError

    def watched_pids(self) -> dict[str, int]:
        """The processes whose CPU time per certificate is reported: the services and the
        infrastructure the target started for itself."""
        return self.service_pids()

    @property
    def database_name(self) -> str | None:
        """The PostgreSQL database of the target (its backends' CPU time is reported)."""
        return None

    def nonce_url(self) -> str:
        """The newNonce URL (read from the directory)."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle)) if self.ca_bundle else False
        with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
            return str(client.get(self.directory_url).json()["newNonce"])


def _base_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}


class AcmeRaTarget(Target):
    """acme-ra as ``make dev`` starts it, with the lab CA or a Pebble as its upstream."""

    def __init__(self, key: str, upstream: str, workdir: Path, tls: TlsMaterial, http01_port: int,
                 database_server_url: str | None, extra_env: Mapping[str, str] | None = None,
                 pebble_dns_server: str | None = None, pebble_http01_port: int | None = None,
                 database_template: str | None = None) -> None:
        """``pebble_dns_server``: the upstream Pebble validates for real, asking this resolver
        (its authorizations are then proved by the signer: ``ACME_RA_UPSTREAM_AUTHZ_STRATEGY``).
        ``database_template``: the database starts as a copy of this one (BenchDatabase)."""
        self.key = key
        self.pebble_dns_server = pebble_dns_server
        # The port the validating Pebble fetches http-01 from (upstream http-01: the responder's).
        self.pebble_http01_port = pebble_http01_port
        self.upstream = upstream
        self.workdir = workdir
        self.tls = tls
        self.http01_port = http01_port
        self.database = BenchDatabase(database_server_url, workdir / "db", database_template)
        self.extra_env = dict(extra_env or {})
        self.pebble: PebbleProcess | None = None
        self.topology: Topology | None = None
        self.label = "acme-ra, lab CA" if upstream == "lab" else "acme-ra, Pebble upstream (EAB)"

    def environment(self) -> dict[str, str]:
        port = free_port()
        env = _base_environment()
        values = {
            "STATE_DIR": str(self.workdir / "var"),
            "DATABASE_URL": self.database.url,
            "LISTEN": f"127.0.0.1:{port}",
            "EXTERNAL_URL": f"https://localhost:{port}",
            # Our own certificate, for both upstreams: with the acme upstream, bootstrap would get one
            # from Pebble, whose bundle (the intermediate only) the launcher cannot verify.
            "TLS_CERT_FILE": str(self.tls.cert("frontend")),
            "TLS_KEY_FILE": str(self.tls.key("frontend")),
            "SECRET_KEY": secrets.token_urlsafe(32),
            "VALIDATION_HTTP_PORT": str(self.http01_port),
            "VALIDATION_TLS_PORT": str(free_port()),
            # One account per worker, all from 127.0.0.1: more than the default 20 per hour when
            # the levels go beyond 16 or runs are repeated. The other limits stay on (they cost
            # a counter row per order, part of what is measured) and are far from reached.
            "RATE_NEW_ACCOUNTS_PER_IP_PER_HOUR": "0",
        }
        for field in Settings.model_fields:  # every other listener on a free port
            if field.endswith("_listen") and field.upper() not in values:
                values[field.upper()] = f"127.0.0.1:{free_port()}"
        if self.pebble is not None:
            values.update({
                "UPSTREAM": "acme",
                "UPSTREAM_DIRECTORY_URL": self.pebble.directory_url,
                "UPSTREAM_EAB_KID": PEBBLE_EAB_KID,
                "UPSTREAM_EAB_HMAC_KEY": self.pebble.eab_hmac_key,
                "UPSTREAM_CA_BUNDLE": str(self.tls.ca),
            })
        env.update({ENV_PREFIX + name: value for name, value in values.items()})
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        if self.upstream == "pebble":
            self.pebble = PebbleProcess(self.workdir / "pebble", self.tls,
                                        always_valid=self.pebble_dns_server is None,
                                        http01_port=self.pebble_http01_port or free_port(),
                                        dns_server=self.pebble_dns_server)
            self.pebble.start()
        self.database.create()
        topology = Topology(self.environment(), nats_port=free_port())
        self.log_dir = topology.log_dir
        # The launcher checks a configured frontend certificate against the default roots:
        # make ours one of them, in this process only.
        previous = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = str(self.tls.ca)
        try:
            topology.start()
        finally:
            if previous is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = previous
        self.topology = topology
        self.directory_url = topology.directory_url
        self.ca_bundle = self.tls.ca

    def stop(self) -> None:
        if self.topology is not None:
            self.topology.stop()
            self.topology = None
        if self.pebble is not None:
            self.pebble.stop()
        self.database.drop()

    def service_pids(self) -> dict[str, int]:
        assert self.topology is not None
        return {name: child.process.pid for name, child in self.topology.services.items()}

    def watched_pids(self) -> dict[str, int]:
        pids = self.service_pids()
        assert self.topology is not None
        if self.topology.nats is not None:
            pids["nats-server"] = self.topology.nats.process.pid
        if self.pebble is not None and self.pebble.pid:
            pids["pebble"] = self.pebble.pid
        return pids

    @property
    def database_name(self) -> str | None:
        return self.database.name


class PebbleTarget(Target):
    """Pebble alone: EAB required, validating http-01 for real against the generator's server.

    Restarted before each level: Pebble 2.4's in-memory store scans every authorization on each
    newOrder (slower as a run goes on) and can deadlock when authorizations are fetched while
    new orders are created (authz lock, then store lock; the scan takes them the other way round,
    letsencrypt/pebble#554 is of the same family). A fresh Pebble per level is its best case.
    """

    restart_per_level = True

    def __init__(self, key: str, workdir: Path, tls: TlsMaterial, http01_port: int) -> None:
        self.key = key
        self.label = "Pebble alone (real http-01)"
        self.pebble = PebbleProcess(workdir, tls, always_valid=False, http01_port=http01_port)
        self.ca_bundle = tls.ca
        self.name_suffix = PEBBLE_NAME_SUFFIX
        self.log_dir = workdir

    def start(self) -> None:
        self.pebble.start()
        self.directory_url = self.pebble.directory_url
        self.eab = (PEBBLE_EAB_KID, self.pebble.eab_hmac_key)

    def stop(self) -> None:
        self.pebble.stop()

    def service_pids(self) -> dict[str, int]:
        pid = self.pebble.pid
        return {"pebble": pid} if pid else {}

    def watched_pids(self) -> dict[str, int]:
        return {child.name: child.process.pid for child in self.pebble.children}


def tls_material(directory: Path) -> TlsMaterial:
    """A throw-away TLS CA and the certificates of the frontends and Pebbles (localhost names)."""
    return ensure_tls_material(directory, {"frontend": LOCAL_NAMES, "pebble": LOCAL_NAMES})


def peak_rss_mb(pids: Mapping[str, int]) -> dict[str, Any]:
    """VmHWM (peak resident set) of each service, in MB: of its largest process when it forks
    workers (the goal is per process); None when it is gone."""
    result: dict[str, Any] = {}
    for name, pid in pids.items():
        result[name] = None
        for member in process_tree(pid):
            try:
                status = Path(f"/proc/{member}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    result[name] = max(result[name] or 0.0, round(int(line.split()[1]) / 1024, 1))
    return result
