"""``python -m bench`` (``make bench``): acme-ra against Pebble, on this machine, in one run.

For each target in turn — (a) acme-ra with the lab CA, (b) acme-ra with a Pebble upstream (EAB),
(c) Pebble alone validating for real — start it fresh, run the load generator (its own process,
``bench.load``) at each concurrency level, measure newNonce, read the peak RSS of each service
process, stop it. Then print the tables and the goals of issue 8, and write everything as JSON.
Exits 1 when any request failed or a target did not run.

    make bench                                  # the full run (a few minutes)
    make bench BENCH_ARGS=--smoke               # a tiny run (what CI's smoke test does)
    make bench BENCH_ARGS='--targets b --levels 16 --profile build/bench/profiles'
    make bench-upstream                         # upstream validation time per method (p50/p95)
    make bench BENCH_ARGS='--targets a,m --perspectives 3'   # (a) against (a) with 3 perspectives
    make bench BENCH_ARGS='--history 1000000'   # empty database against 1M historical orders (pairs)
    make bench BENCH_ARGS='--history 1000000 --purge'    # the same load with and without a purge
    make bench BENCH_ARGS='--baseline-ref 54a1d21'       # an earlier commit against this checkout

``--history``, ``--baseline-ref``: same-run comparisons in interleaved pairs (bench/compare.py).
``--upstream-validation`` measures, in place of the targets, how long a Pebble validating for real
takes to validate what the signer proves to it, per method (bench/upstream_validation.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from acme_ra_tools.supervisor import LaunchError, free_port, port_is_free
from bench import compare, nonces, perspectives, profiling, report, upstream_validation
from bench.load import DEFAULT_POLL_CAP_SECONDS, LoadConfig
from bench.purge_during_load import PurgeDuringLoad
from bench.targets import AcmeRaTarget, PebbleTarget, Target, TargetError, peak_rss_mb, tls_material

# ACME_RA_DATABASE_URL of the PostgreSQL server the acme-ra targets use (a database of their
# own is created on it and dropped afterwards). --database-url sqlite: SQLite files instead.
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_LEVELS = "8,16"
DEFAULT_COUNT = 200
# Frontend processes of the acme-ra targets: one per core of the 2-core machine the goals are set on.
DEFAULT_FRONTEND_WORKERS = 2
TARGET_KEYS = ("a", "b", "c")
# How often a level is measured again on a restarted target when the server stopped answering.
STUCK_ATTEMPTS = 3
# The longest one generator run may take before it is stopped (seconds).
LOAD_TIMEOUT_SECONDS = 1800
ROOT = Path(__file__).resolve().parents[1]
# Where the generator's http-01 server may listen (below the kernel's ephemeral ports).
HTTP01_PORTS = (20000, 30000)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGET_KEYS),
                        help="comma list of a (acme-ra, lab CA), b (acme-ra, Pebble upstream), c (Pebble alone)")
    parser.add_argument("--perspectives", type=int, default=0, metavar="N",
                        help="run target m too: (a) whose validator asks N remote perspectives "
                             f"(multi-perspective corroboration; bench/perspectives.py; m alone: {perspectives.DEFAULT_PERSPECTIVES})")
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help=f"concurrency levels (default {DEFAULT_LEVELS})")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help=f"certificates measured per level (default {DEFAULT_COUNT})")
    parser.add_argument("--warmup", type=int, default=None,
                        help="certificates per level before measuring (default: 2 × concurrency)")
    parser.add_argument("--poll-cap", type=float, default=DEFAULT_POLL_CAP_SECONDS,
                        help="longest wait between polls whatever Retry-After says "
                             f"(default {DEFAULT_POLL_CAP_SECONDS} s)")
    parser.add_argument("--database-url", default=os.environ.get("ACME_RA_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
                        help="PostgreSQL server for acme-ra (postgresql+asyncpg://...; a database is created per "
                             f"target and dropped), or 'sqlite' (default {DEFAULT_DATABASE_URL})")
    parser.add_argument("--nonce-seconds", type=float, default=nonces.DEFAULT_SECONDS,
                        help=f"length of the newNonce measurement (default {nonces.DEFAULT_SECONDS:.0f} s; 0: skip)")
    parser.add_argument("--nonce-connections", type=int, default=nonces.DEFAULT_CONNECTIONS)
    parser.add_argument("--ra-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of the acme-ra services (repeatable), e.g. ACME_RA_DB_POOL_SIZE=20")
    parser.add_argument("--frontend-workers", type=int, default=DEFAULT_FRONTEND_WORKERS, metavar="N",
                        help="ACME_RA_FRONTEND_WORKERS of the acme-ra targets: frontend processes sharing the "
                             f"listening socket (default {DEFAULT_FRONTEND_WORKERS}, the cores of the machine "
                             "the goals name; an --ra-env ACME_RA_FRONTEND_WORKERS=... wins)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record py-spy profiles of the acme-ra services during the load into DIR")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / "work",
                        help="state dirs and logs of the targets (emptied first)")
    parser.add_argument("--json", type=Path, default=ROOT / "build" / "bench" / "results.json",
                        help="where the results are written")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run: concurrency 2, 3 certificates, 1 s of newNonce (CI's smoke test)")
    parser.add_argument("--upstream-validation", action="store_true",
                        help="measure the upstream's validation time per method against a Pebble validating for "
                             "real, in place of the targets")
    parser.add_argument("--upstream-methods", default=",".join(upstream_validation.METHODS),
                        help="with --upstream-validation: comma list of "
                             f"{', '.join(upstream_validation.METHODS)} (default: all)")
    comparison = parser.add_argument_group("same-run comparisons (interleaved pairs, bench/compare.py)")
    comparison.add_argument("--history", type=int, default=0, metavar="N",
                            help="an empty database against one holding N historical orders (bench.history)")
    comparison.add_argument("--purge", action="store_true",
                            help="with --history: the history database with and without `acme-ra db purge` "
                                 "running during the load")
    comparison.add_argument("--baseline-ref", default=None, metavar="REV",
                            help="acme-ra of commit REV (a git worktree, its code first on PYTHONPATH) against "
                                 "this checkout")
    comparison.add_argument("--rounds", type=int, default=2, help="pairs measured (default 2)")
    comparison.add_argument("--keep-baseline", action="store_true", help="keep the baseline's git worktree")
    parser.add_argument("--database-template", default=None, help=argparse.SUPPRESS)  # compare.py's inner runs
    parser.add_argument("--purge-during-load", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.purge and not args.history:
        parser.error("--purge needs --history N")
    if args.history < 0 or args.rounds < 1 or (args.history and args.baseline_ref):
        parser.error("--history N (N >= 0) or --baseline-ref, with --rounds >= 1")
    if (args.history or args.baseline_ref) and args.targets == ",".join(TARGET_KEYS):
        args.targets = "b"  # the comparisons' goals are about acme-ra with the Pebble upstream
    args.upstream_method_list = [v.strip() for v in args.upstream_methods.split(",") if v.strip()]
    unknown_methods = set(args.upstream_method_list) - set(upstream_validation.METHODS)
    if unknown_methods or not args.upstream_method_list:
        parser.error(f"--upstream-methods: unknown {', '.join(sorted(unknown_methods)) or 'none given'}")
    if args.smoke:
        args.levels, args.count, args.warmup = "2", 3, 1
        args.nonce_seconds = min(args.nonce_seconds, 1.0)
    args.level_list = [int(v) for v in args.levels.split(",") if v.strip()]
    args.target_list = [v.strip() for v in args.targets.split(",") if v.strip()]
    if args.perspectives > 0 and perspectives.KEY not in args.target_list:
        args.target_list.append(perspectives.KEY)
    unknown = set(args.target_list) - set(TARGET_KEYS) - {perspectives.KEY}
    if unknown or not args.target_list:
        parser.error(f"--targets: unknown {', '.join(sorted(unknown)) or 'none given'}")
    if not args.level_list or min(args.level_list) < 1 or args.count < 1:
        parser.error("--levels and --count must be positive")
    for item in args.ra_env:
        if "=" not in item:
            parser.error(f"--ra-env {item!r}: expected NAME=VALUE")
    if args.frontend_workers < 1:
        parser.error("--frontend-workers must be at least 1")
    if not any(item.startswith("ACME_RA_FRONTEND_WORKERS=") for item in args.ra_env):
        args.ra_env.append(f"ACME_RA_FRONTEND_WORKERS={args.frontend_workers}")
    return args


def reference_loop_ms() -> float:
    """A fixed pure-Python workload, best of 5 (ms): how fast this machine's cores are right now.
    Runs on a busy machine take longer; compare it between runs before comparing figures."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for number in range(300_000):
            total += number * 2 % 7
        best = min(best, time.perf_counter() - started)
    return round(1000 * best, 1)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        memory_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "load_average": os.getloadavg(),
            "reference_loop_ms": reference_loop_ms(), "python": platform.python_version(),
            "kernel": platform.release(), "commit": commit or "unknown"}


def machine_line(info: dict[str, Any]) -> str:
    return (f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB, Python {info['python']}, "
            f"commit {info['commit']}; load average {' '.join(f'{v:.2f}' for v in info['load_average'])}, "
            f"reference loop {info['reference_loop_ms']} ms")


def http01_port_outside_ephemeral_range() -> int:
    """A free port for the generator's http-01 server that no ``free_port()`` (ours, the
    launcher's, anyone's) can hand out meanwhile: those come from the kernel's ephemeral range."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    candidates = [p for p in range(HTTP01_PORTS[0], HTTP01_PORTS[1]) if not low <= p <= high]
    random.shuffle(candidates)
    for port in candidates:
        if port_is_free(port):
            return port
    return int(free_port())


def frontend_processes(target: Target) -> int:
    """How many processes answered the newNonce measurement (the goal is per frontend process)."""
    if not isinstance(target, AcmeRaTarget):
        return 1
    workers = target.extra_env.get("ACME_RA_FRONTEND_WORKERS", "1")
    return int(workers) if workers.isdigit() and int(workers) > 0 else 1


def make_target(key: str, args: argparse.Namespace, workdir: Path, http01_port: int) -> Target:
    tls = tls_material(workdir / "tls")
    database = None if args.database_url == "sqlite" else args.database_url
    extra_env = dict(item.split("=", 1) for item in args.ra_env)
    if key == "a":
        return AcmeRaTarget("a", "lab", workdir / "a", tls, http01_port, database, extra_env,
                            database_template=args.database_template)
    if key == "b":
        return AcmeRaTarget("b", "pebble", workdir / "b", tls, http01_port, database, extra_env,
                            database_template=args.database_template)
    if key == perspectives.KEY:
        return perspectives.PerspectivesTarget(args.perspectives or perspectives.DEFAULT_PERSPECTIVES,
                                               workdir / key, tls, http01_port, database, extra_env)
    return PebbleTarget("c", workdir / "c", tls, http01_port)


def run_load(target: Target, args: argparse.Namespace, workdir: Path, http01_port: int) -> dict[str, Any]:
    """The generator at every level; a target that must start fresh (Pebble) is restarted
    before each level after the first, and the generator then runs once per level."""
    if not target.restart_per_level:
        return _run_generator(target, args, workdir, http01_port, args.level_list)
    merged: dict[str, Any] = {"levels": [], "setup_error": None, "stuck_attempts": []}
    for number, level in enumerate(args.level_list):
        for attempt in range(1, STUCK_ATTEMPTS + 1):
            if number or attempt > 1:
                target.restart()
            result = _run_generator(target, args, workdir, http01_port, [level])
            levels = result.get("levels", [])
            if attempt < STUCK_ATTEMPTS and levels and levels[-1].get("aborted"):
                # The server stopped answering (Pebble 2.4's lock cycle): this attempt says
                # nothing about its speed. Start it afresh and measure the level again.
                merged["stuck_attempts"].append({"concurrency": level, "attempt": attempt,
                                                 "completed": levels[-1]["completed"]})
                print(f"bench: ({target.key}) concurrency {level}: the server stopped answering; "
                      "restarting it and measuring the level again", file=sys.stderr, flush=True)
                continue
            break
        merged["levels"] += levels
        merged["setup_error"] = merged["setup_error"] or result.get("setup_error")
        merged.setdefault("config", result.get("config"))
    return merged


def _run_generator(target: Target, args: argparse.Namespace, workdir: Path, http01_port: int,
                   levels: list[int]) -> dict[str, Any]:
    config = LoadConfig(
        directory_url=target.directory_url,
        http01_port=http01_port,
        levels=levels,
        count=args.count,
        warmup=args.warmup,
        poll_cap=args.poll_cap,
        name_suffix=target.name_suffix,
        ca_bundle=str(target.ca_bundle) if target.ca_bundle else None,
        eab_kid=target.eab[0] if target.eab else None,
        eab_hmac_key=target.eab[1] if target.eab else None,
        watch_pids=target.watched_pids(),
        launcher_pid=os.getpid(),
        watch_database=target.database_name,
    )
    config_path, result_path = workdir / f"load-{target.key}.json", workdir / f"result-{target.key}.json"
    config_path.write_text(json.dumps(config.__dict__))
    result_path.unlink(missing_ok=True)
    recording = None
    if args.profile is not None and isinstance(target, AcmeRaTarget):
        recording = profiling.Recording(args.profile, target.key, target.service_pids())
        recording.start()
    try:
        subprocess.run([sys.executable, "-m", "bench.load", str(config_path), str(result_path)],
                       cwd=ROOT, timeout=LOAD_TIMEOUT_SECONDS, check=False)
    finally:
        if recording is not None:
            for name, path in recording.stop().items():
                print(profiling.format_summary(f"({target.key}) {name} profile {path}", profiling.summarise(path)),
                      flush=True)
    if not result_path.is_file():
        return {"setup_error": "the load generator wrote no result", "levels": []}
    return dict(json.loads(result_path.read_text()))


def measure_target(key: str, args: argparse.Namespace, workdir: Path, http01_port: int) -> dict[str, Any]:
    target = make_target(key, args, workdir, http01_port)
    result: dict[str, Any] = {"key": key, "label": target.label, "load_average_before": os.getloadavg()}
    print(f"bench: ({key}) {target.label}: starting", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        target.start()
        result["directory_url"] = target.directory_url
        print(f"bench: ({key}) started in {time.monotonic() - started:.1f}s; load", file=sys.stderr, flush=True)
        purge = None
        if args.purge_during_load and isinstance(target, AcmeRaTarget):
            purge = PurgeDuringLoad(target.database.url)
            purge.start()
        result["load"] = run_load(target, args, workdir, http01_port)
        if purge is not None:
            result["purge"] = purge.finish(sum(level["wall_seconds"] for level in result["load"].get("levels", [])))
        if args.nonce_seconds > 0:
            server = target.service_pids()
            result["new_nonce"] = nonces.measure(target.nonce_url(), args.nonce_seconds, args.nonce_connections,
                                                 target.ca_bundle, server.get("frontend") or server.get("pebble"))
            result["new_nonce"]["processes"] = frontend_processes(target)
        result["rss_mb"] = peak_rss_mb(target.service_pids())
        result["load_average_after"] = os.getloadavg()
    except Exception as error:  # noqa: BLE001 - report it and go on with the next target
        result["error"] = f"{type(error).__name__}: {error}" if not isinstance(error, (TargetError, LaunchError)) \
            else str(error)
        print(f"bench: ({key}) failed: {error}", file=sys.stderr, flush=True)
    finally:
        try:
            target.stop()
        except Exception as error:  # noqa: BLE001 - report, and go on with the next target
            print(f"bench: ({key}) stop failed: {error}", file=sys.stderr, flush=True)
    if isinstance(target, AcmeRaTarget):
        result["database"] = target.database.backend
    result["log_dir"] = str(target.log_dir) if target.log_dir else None
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile is not None and profiling.available() is None:
        print("bench: --profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    info = machine()
    print(machine_line(info), file=sys.stderr, flush=True)
    http01_port = http01_port_outside_ephemeral_range()
    targets: list[dict[str, Any]] = []
    results = {
        "machine": info,
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"levels": args.level_list, "count": args.count, "warmup": args.warmup,
                     "poll_cap_seconds": args.poll_cap, "database": "sqlite" if args.database_url == "sqlite"
                     else "postgresql", "ra_env": args.ra_env},
        "targets": targets,
        "errors": 0,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.history or args.baseline_ref:
        return compare.run(args, workdir, info)
    if args.upstream_validation:
        methods = upstream_validation.run(args, workdir, http01_port, _run_generator)
        results["upstream_validation"] = methods
        results["errors"] = upstream_validation.errors(methods)
        args.json.write_text(json.dumps(results, indent=1))
        print()
        print(machine_line(info))
        print(upstream_validation.table(methods, args))
        print(f"\nresults: {args.json}   logs: {workdir}")
        return 1 if results["errors"] else 0
    for key in args.target_list:
        targets.append(measure_target(key, args, workdir, http01_port))
        results["errors"] = report.total_errors(targets)
        args.json.write_text(json.dumps(results, indent=1))  # after each target: a crash keeps the rest
    print()
    print(machine_line(info))
    print(report.full_report(targets))
    cost = perspectives.cost_lines(targets)
    if cost:
        print("\n" + cost)
    print(f"\nresults: {args.json}   logs: {workdir}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
