"""The load generator: full ACME issuances at fixed concurrency levels against one directory.

Per certificate: newOrder, the authorization, the http-01 answer published on the generator's
own server, the challenge POST, authorization polls, finalize, order polls, the download. One
account per worker (registered first, with EAB when configured); per level a warm-up that is
not recorded, then a fixed count of certificates. Polls wait ``min(Retry-After, poll_cap)``:
the server's Retry-After is honoured but capped, and the values seen are reported.

Run by ``python -m bench`` as its own process, so that the runner's log pumps never share this
event loop: ``python -m bench.load CONFIG.json RESULT.json``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.acme_client import AcmeClient, AcmeError, Answer, Recorder, b64, make_csr
from bench.challenge_server import ChallengeServer
from bench.counters import InstructionCounters
from bench.http_client import HttpClient, HttpError
from bench.latency import summary

# Longest wait between two polls, whatever Retry-After says (seconds).
DEFAULT_POLL_CAP_SECONDS = 0.05
# The most one certificate may take, newOrder to download (seconds).
DEFAULT_CERTIFICATE_TIMEOUT_SECONDS = 120.0
# Timeout of one HTTP request (seconds).
REQUEST_TIMEOUT_SECONDS = 30.0
# Accounts registered at once before the levels start.
REGISTRATION_CONCURRENCY = 4
# Pseudo-endpoints: from the challenge POST until a poll sees the authorization valid, and from
# the finalize POST until a poll sees the order valid (poll waits included).
VALIDATED = "challenge→valid"
ISSUED = "finalize→valid"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FAILED_STATES = {"invalid", "revoked", "deactivated", "expired"}


@dataclass
class LoadConfig:
    directory_url: str
    http01_port: int
    levels: list[int] = field(default_factory=lambda: [8, 16])
    count: int = 300  # certificates measured per level
    warmup: int | None = None  # certificates per level before measuring (default: 2 × concurrency)
    poll_cap: float = DEFAULT_POLL_CAP_SECONDS
    name_suffix: str = "bench.localhost"
    ca_bundle: str | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    http01_host: str = "127.0.0.1"
    certificate_timeout: float = DEFAULT_CERTIFICATE_TIMEOUT_SECONDS
    # Processes whose CPU time per certificate is reported, by name (the target's services).
    watch_pids: dict[str, int] = field(default_factory=dict)
    # The process that started the target and copies its services' output into log files
    # (acme_ra_tools.supervisor.Child): its own CPU, children not included.
    launcher_pid: int | None = None
    # The PostgreSQL database whose backend processes' CPU time is reported as "postgresql".
    watch_database: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadConfig:
        return cls(**data)


@dataclass
class Counters:
    completed: int = 0
    failed: int = 0
    authz_polls: int = 0
    order_polls: int = 0
    timeouts: int = 0
    aborted: bool = False
    issuance: list[float] = field(default_factory=list)


class LoadGenerator:
    def __init__(self, config: LoadConfig, tls: ssl.SSLContext | None, challenges: ChallengeServer) -> None:
        self.config = config
        self.tls = tls
        self.challenges = challenges
        self.recorder = Recorder()
        self.directory: dict[str, Any] = {}
        self.clients: list[AcmeClient] = []
        self.run_id = secrets.token_hex(3)

    async def setup(self) -> None:
        http = self.new_http_client()
        try:
            response = await http.request("GET", self.config.directory_url)
        finally:
            await http.close()
        if response.status != 200:
            raise HttpError(f"GET {self.config.directory_url}: HTTP {response.status}")
        self.directory = orjson.loads(response.body)
        eab = None
        if self.config.eab_kid and self.config.eab_hmac_key:
            eab = (self.config.eab_kid, self.config.eab_hmac_key)
        self.clients = [AcmeClient(self.new_http_client(), self.directory, self.recorder)
                        for _ in range(max(self.config.levels))]
        slots = asyncio.Semaphore(REGISTRATION_CONCURRENCY)

        async def register(client: AcmeClient) -> None:
            async with slots:
                await client.register(eab)

        await asyncio.gather(*(register(client) for client in self.clients))

    def new_http_client(self) -> HttpClient:
        return HttpClient(self.tls, REQUEST_TIMEOUT_SECONDS)

    async def close(self) -> None:
        for client in self.clients:
            await client.http.close()

    # One certificate ----------------------------------------------------------------------

    def _wait(self, answer: Answer) -> float:
        body = answer.body if isinstance(answer.body, dict) else {}
        if body.get("type") and body.get("status") in ("valid", "invalid"):
            return 0.0  # a challenge answered once its validation was over: poll the authorization now
        retry_after = answer.retry_after()
        return self.config.poll_cap if retry_after is None else min(retry_after, self.config.poll_cap)

    async def issue(self, client: AcmeClient, name: str, csr: bytes, counters: Counters) -> None:
        started = time.perf_counter()
        order = await client.post(
            "newOrder", self.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}, expect=(201,)
        )
        order_url = order.location
        authz_url = order.body["authorizations"][0]
        authz = await client.post("authz", authz_url)
        token = None
        if authz.body["status"] != "valid":
            challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
            token = challenge["token"]
            self.challenges.tokens[token] = client.key_authorization(token)
            answer = await client.post("challenge", challenge["url"], {})
            answered = time.perf_counter()
            while authz.body["status"] != "valid":
                if authz.body["status"] in FAILED_STATES:
                    raise AcmeError("authz-poll", authz.status, authz.body, f"authorization {authz.body['status']}")
                await asyncio.sleep(self._wait(answer))
                authz = answer = await client.post("authz-poll", authz_url)
                counters.authz_polls += 1
            self.recorder.record(VALIDATED, time.perf_counter() - answered)
        if token is not None:
            self.challenges.tokens.pop(token, None)
        finalizing = time.perf_counter()
        current = await client.post("finalize", order.body["finalize"], {"csr": b64(csr)})
        while current.body["status"] != "valid":
            if current.body["status"] in FAILED_STATES:
                raise AcmeError("order-poll", current.status, current.body, f"order {current.body['status']}")
            await asyncio.sleep(self._wait(current))
            current = await client.post("order-poll", order_url)
            counters.order_polls += 1
        self.recorder.record(ISSUED, time.perf_counter() - finalizing)
        certificate = await client.post("certificate", current.body["certificate"])
        if not isinstance(certificate.body, str) or not certificate.body.startswith("-----BEGIN CERTIFICATE-----"):
            raise AcmeError("certificate", certificate.status, None, "certificate: not a PEM chain")
        counters.issuance.append(time.perf_counter() - started)

    # One phase: a fixed count at a fixed concurrency ---------------------------------------

    async def phase(self, concurrency: int, count: int, label: str) -> tuple[Counters, float]:
        names = [f"{self.run_id}-c{concurrency}{label}{n}.{self.config.name_suffix}" for n in range(count)]
        csrs = [make_csr(name) for name in names]  # before the clock starts
        next_index = itertools.count()
        counters = Counters()

        async def worker(client: AcmeClient) -> None:
            while not counters.aborted and (index := next(next_index)) < count:
                try:
                    async with asyncio.timeout(self.config.certificate_timeout):
                        await self.issue(client, names[index], csrs[index], counters)
                    counters.completed += 1
                except AcmeError as error:
                    counters.failed += 1
                    self.recorder.error(error)
                except Exception as error:  # noqa: BLE001 - transport errors, timeouts: all count
                    counters.failed += 1
                    self.recorder.errors.append({"endpoint": "?", "status": 0, "problem": None,
                                                 "error": f"{type(error).__name__}: {error}"})
                    if isinstance(error, TimeoutError) or (isinstance(error, HttpError) and error.timed_out):
                        counters.timeouts += 1
                        if counters.timeouts >= concurrency and not counters.aborted:
                            counters.aborted = True  # every worker waited in vain: the server is stuck
                            self.recorder.errors.append({
                                "endpoint": "?", "status": 0, "problem": None,
                                "error": f"level aborted: {counters.timeouts} requests or certificates timed out"})

        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for client in self.clients[:concurrency]))
        return counters, time.perf_counter() - started

    async def level(self, concurrency: int) -> dict[str, Any]:
        warmup = self.config.warmup if self.config.warmup is not None else 2 * concurrency
        self.recorder.recording = False
        if warmup:
            warm, _ = await self.phase(concurrency, warmup, "w")
            if warm.failed:
                print(f"bench: warm-up at concurrency {concurrency}: {warm.failed} failed", file=sys.stderr)
        warmup_errors = list(self.recorder.errors)
        self.recorder.reset()
        self.recorder.recording = True
        served, missed = self.challenges.served, self.challenges.missed
        cpu_started = time.process_time()
        watched_started = {name: process_cpu_seconds(pid) for name, pid in self.config.watch_pids.items()}
        launcher = self.config.launcher_pid
        if launcher is not None:
            watched_started[LAUNCHER] = own_cpu_seconds(launcher)
        backends_started = postgres_backends_cpu(self.config.watch_database)
        trees = {name: process_tree(pid) for name, pid in self.config.watch_pids.items()}
        instructions = InstructionCounters({**trees, "postgresql": list(backends_started),
                                            "load generator": os.getpid()})
        instructions.start()
        counters, wall = await self.phase(concurrency, self.config.count, "m")
        counted = instructions.stop()
        cpu = time.process_time() - cpu_started
        watched = {name: process_cpu_seconds(pid) for name, pid in self.config.watch_pids.items()}
        if launcher is not None:
            watched[LAUNCHER] = own_cpu_seconds(launcher)
        backends = postgres_backends_cpu(self.config.watch_database)
        if self.config.watch_database:
            watched_started["postgresql"] = 0.0
            watched["postgresql"] = sum(cpu_now - backends_started.get(pid, 0.0) for pid, cpu_now in backends.items())
        requests = sum(len(values) for name, values in self.recorder.latencies.items()
                       if name not in (VALIDATED, ISSUED))
        done = max(counters.completed, 1)
        cpu_ms = {}
        for name, started in watched_started.items():
            ended = watched.get(name)
            if started is not None and ended is not None:
                cpu_ms[name] = round(1000 * (ended - started) / done, 2)
        cpu_ms["load generator"] = round(1000 * cpu / done, 2)
        return {
            "concurrency": concurrency,
            "count": self.config.count,
            "warmup": warmup,
            "completed": counters.completed,
            "failed": counters.failed,
            "aborted": counters.aborted,
            "wall_seconds": round(wall, 3),
            "certificates_per_second": round(counters.completed / wall, 2) if wall else 0.0,
            "issuance_ms": summary(counters.issuance),
            "endpoints_ms": {name: summary(values) for name, values in sorted(self.recorder.latencies.items())},
            "requests": requests,
            "requests_per_certificate": round(requests / done, 2),
            "authz_polls_per_certificate": round(counters.authz_polls / done, 2),
            "order_polls_per_certificate": round(counters.order_polls / done, 2),
            "retry_after_seen": dict(self.recorder.retry_after),
            "poll_cap_seconds": self.config.poll_cap,
            "errors": list(self.recorder.errors),
            "warmup_errors": warmup_errors,
            "generator_cpu_percent": round(100 * cpu / wall, 1) if wall else 0.0,
            "cpu_ms_per_certificate": cpu_ms,
            # Millions of instructions per certificate (perf stat; PostgreSQL: the backends that
            # existed when the level started).
            "minstr_per_certificate": {name: round(count / done / 1e6, 1) for name, count in counted.items()},
            "http01_served": self.challenges.served - served,
            "http01_missed": self.challenges.missed - missed,
        }


LAUNCHER = "launcher (log copying)"


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its living children (a service that forks workers: the frontend with
    ACME_RA_FRONTEND_WORKERS > 1)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                children.append(int(entry.name))
    return [pid, *sorted(children)]


def own_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time so far of one process (Linux /proc), or None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time so far of a process and its living children, or None when the
    process is gone."""
    total = None
    for member in process_tree(pid):
        seconds = own_cpu_seconds(member)
        if seconds is not None:
            total = (total or 0.0) + seconds
    return total


def postgres_backends_cpu(database: str | None) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving ``database`` (their titles name it)."""
    if not database:
        return {}
    marker = f" {database} ".encode()
    result = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres: ") and marker in title:
            seconds = process_cpu_seconds(int(entry.name))
            if seconds is not None:
                result[int(entry.name)] = seconds
    return result


async def run(config: LoadConfig) -> dict[str, Any]:
    result: dict[str, Any] = {"config": asdict(config), "levels": [], "setup_error": None}
    challenges = ChallengeServer(config.http01_host, config.http01_port)
    try:
        await challenges.start()
    except OSError as error:
        result["setup_error"] = f"the http-01 server cannot listen on port {config.http01_port}: {error}"
        return result
    tls = ssl.create_default_context(cafile=config.ca_bundle) if config.ca_bundle else None
    generator = LoadGenerator(config, tls, challenges)
    try:
        try:
            await generator.setup()
        except (AcmeError, HttpError, OSError) as error:
            result["setup_error"] = error.to_data() if isinstance(error, AcmeError) else repr(error)
            return result
        for concurrency in config.levels:
            print(f"bench:   concurrency {concurrency}: {config.count} certificates ...", file=sys.stderr, flush=True)
            level = await generator.level(concurrency)
            print(f"bench:   concurrency {concurrency}: {level['certificates_per_second']} certificates/s, "
                  f"p50 {level['issuance_ms'].get('p50')} ms, {level['failed']} failed",
                  file=sys.stderr, flush=True)
            result["levels"].append(level)
    finally:
        await generator.close()
        await challenges.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.load CONFIG.json RESULT.json", file=sys.stderr)
        return 2
    config = LoadConfig.from_json(json.loads(Path(args[0]).read_text()))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        result = asyncio.run(run(config))
    else:
        result = uvloop.run(run(config))
    Path(args[1]).write_text(json.dumps(result, indent=1))
    failed = result["setup_error"] is not None or any(level["failed"] or level["errors"] for level in result["levels"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
