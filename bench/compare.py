"""Same-run comparisons for ``make bench``: two variants measured in interleaved pairs (A B, B A, A B…),
each run a fresh ``python -m bench`` of its own, so both see the machine as it is at that moment.
A pair in which a run failed certificates (Pebble 2.4 hangs now and then under load: every request
after some moment unanswered) is shown, left out of the medians and measured again, up to
``--rounds`` extra pairs.

- ``--history N``: acme-ra on an empty database (A) against the same on a database holding N
  historical orders (B, ``bench.history``; filled once into a template database that each B run
  is created from).
- ``--history N --purge``: the history database (A) against the same while ``acme-ra db purge``
  deletes the expired part of the history during the load (B).
- ``--baseline-ref REV``: acme-ra of commit REV (A: a ``git worktree`` of it, its code first on
  PYTHONPATH, run by its own ``bench``) against this checkout (B).

The scheduled purge of the signers is off in every run (``ACME_RA_RETENTION_DAYS=0``) unless the
comparison is about the baseline: a history must not vanish in the middle of a run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.targets import BenchDatabase

ROOT = Path(__file__).resolve().parents[1]
# The longest one inner run may take (seconds): targets, load and purge.
RUN_TIMEOUT_SECONDS = 7200
# Processes of a target that are not acme-ra's (left out of its CPU per certificate).
NOT_ACME_RA = {"pebble", "load generator", "launcher (log copying)"}
MEASURES = ("certificates_per_second", "p50", "p99", "cpu_ms")
# The longest the history fill may take (seconds; 1,000,000 orders take a few minutes).
FILL_TIMEOUT_SECONDS = 7200


@dataclass
class Variant:
    name: str
    args: list[str] = field(default_factory=list)
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)


def inner_argv(args: argparse.Namespace) -> list[str]:
    """What every inner run measures: the outer run's targets, levels and counts, no newNonce."""
    argv = ["--targets", args.targets, "--levels", args.levels, "--count", str(args.count),
            "--poll-cap", str(args.poll_cap), "--database-url", args.database_url, "--nonce-seconds", "0",
            "--frontend-workers", str(args.frontend_workers)]
    if args.warmup is not None:
        argv += ["--warmup", str(args.warmup)]
    for item in args.ra_env:
        argv += ["--ra-env", item]
    return argv


def baseline_tree(rev: str, workdir: Path) -> tuple[Path, dict[str, str]]:
    """A detached worktree of ``rev`` and the PYTHONPATH that puts its packages first (the
    package roots its pyproject.toml names; the venv's editable install of this checkout comes
    after them)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            capture_output=True, text=True, check=False)
    if commit.returncode:
        raise SystemExit(f"bench: --baseline-ref {rev}: {commit.stderr.strip()}")
    tree = workdir / f"baseline-{commit.stdout.strip()[:12]}"
    if not (tree / "pyproject.toml").is_file():
        # A worktree kept by --keep-baseline was emptied with the work directory: forget it first.
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False, capture_output=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit.stdout.strip()],
                       check=True, capture_output=True)
    roots = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["where"]
    return tree, {"PYTHONPATH": ":".join([str(tree)] + [str(tree / root) for root in roots])}


def remove_baseline_tree(tree: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False,
                   capture_output=True)


def fill_template(args: argparse.Namespace, workdir: Path) -> tuple[BenchDatabase, dict[str, Any]]:
    """A migrated database holding ``args.history`` orders, to copy for every history run."""
    from acme_ra.db.migrate import upgrade

    template = BenchDatabase(None if args.database_url == "sqlite" else args.database_url, workdir / "template")
    url = template.create()
    upgrade(url)
    print(f"bench: filling {args.history} historical orders", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "bench.history", "--database-url", url, "--orders",
                           str(args.history), "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=FILL_TIMEOUT_SECONDS, check=False)
    if done.returncode:
        template.drop()
        raise SystemExit(f"bench: bench.history failed:\n{done.stderr[-3000:]}")
    filled: dict[str, Any] = json.loads(done.stdout)
    print(f"bench: filled in {filled['seconds']} s", file=sys.stderr, flush=True)
    return template, filled


def template_argument(template: BenchDatabase) -> str:
    return template.name or str(template.directory / "acme-ra.db")


def variants(args: argparse.Namespace, workdir: Path, notes: dict[str, Any]) -> tuple[list[Variant], list[Any]]:
    """The two variants (A, B) and what to clean up afterwards."""
    no_purge = ["--ra-env", "ACME_RA_RETENTION_DAYS=0"]
    if args.baseline_ref:
        tree, env = baseline_tree(args.baseline_ref, workdir)
        notes["baseline"] = {"ref": args.baseline_ref, "tree": str(tree)}
        return [Variant(f"baseline {args.baseline_ref}", cwd=tree, env=env), Variant("this checkout")], [tree]
    template, filled = fill_template(args, workdir)
    notes["history_fill"] = filled
    history = ["--database-template", template_argument(template), *no_purge]
    if args.purge:
        return [Variant(f"history {args.history}", history),
                Variant(f"history {args.history} + purge", [*history, "--purge-during-load"])], [template]
    return [Variant("empty", no_purge), Variant(f"history {args.history}", history)], [template]


def run_once(variant: Variant, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import os

    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bench", *inner_argv(args), *variant.args, "--json", str(out / "results.json"),
            "--workdir", str(out / "work")]
    env = {**os.environ, **variant.env}
    started = time.monotonic()
    with (out / "bench.log").open("wb") as log:
        subprocess.run(argv, cwd=variant.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                       timeout=RUN_TIMEOUT_SECONDS, check=False)
    path = out / "results.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"targets": [], "errors": 1}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def figures(result: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """(target, concurrency) → certificates/s, p50, p99 (ms), CPU ms per certificate of acme-ra's
    processes (PostgreSQL and nats-server included: the steadier measure on a busy machine),
    failed; purge figures when any."""
    found = {}
    for target in result.get("targets", []):
        for level in (target.get("load") or {}).get("levels", []):
            issuance = level.get("issuance_ms", {})
            cpu = level.get("cpu_ms_per_certificate") or {}
            found[(target["key"], level["concurrency"])] = {
                "certificates_per_second": level.get("certificates_per_second"), "p50": issuance.get("p50"),
                "p99": issuance.get("p99"), "failed": level.get("failed", 0), "purge": target.get("purge"),
                "cpu_ms": round(sum(v for k, v in cpu.items() if k not in NOT_ACME_RA and v), 2) if cpu else None}
    return found


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def _ratio(b: float | None, a: float | None) -> float | None:
    return round(b / a, 3) if a and b is not None else None


def summary(names: list[str], rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per target and level: each variant's median figures and the per-pair ratios B/A. A pair in
    which either run failed certificates (an upstream that hung, say) is shown but left out of the
    medians: its figures measure the failure, not the code."""
    keys = sorted({key for pair in rounds for run in pair for key in figures(run)})
    rows = []
    for key in keys:
        pairs: list[tuple[dict[str, Any], dict[str, Any]]] = [
            (figures(a).get(key) or {}, figures(b).get(key) or {}) for a, b in rounds]
        complete = [(a, b) for a, b in pairs if a and b and not a["failed"] and not b["failed"]]
        row: dict[str, Any] = {"target": key[0], "concurrency": key[1],
                               "left_out": [number for number, (a, b) in enumerate(pairs, 1) if (a, b) not in complete]}
        for index, name in enumerate(names):
            runs = [pair[index] for pair in pairs if pair[index]]
            row[name] = {measure: _median([pair[index].get(measure) for pair in complete]) for measure in MEASURES}
            row[name]["failed"] = sum(run["failed"] or 0 for run in runs)
        for measure in MEASURES:
            row[f"ratio_{measure}"] = [_ratio(b.get(measure), a.get(measure)) for a, b in pairs if a and b]
            row[f"median_ratio_{measure}"] = _median([_ratio(b.get(measure), a.get(measure)) for a, b in complete])
        row["purges"] = [b["purge"] for _, b in pairs if b and b.get("purge")]
        rows.append(row)
    return rows


def table(names: list[str], rows: list[dict[str, Any]]) -> str:
    a, b = names
    lines = [f"Same run, interleaved pairs: A = {a}, B = {b} (medians over the pairs; ratios B/A per pair)",
             (f"  {'target':<6} {'conc':>4} {'A certs/s':>9} {'B certs/s':>9} {'ratio':>6}   {'A p50':>7} "
              f"{'B p50':>7} {'ratio':>6}   {'A p99':>7} {'B p99':>7} {'ratio':>6}   {'A CPU':>6} {'B CPU':>6} "
              f"{'ratio':>6}   pairs (certs/s; p50; p99; CPU ms/cert)")]
    for row in rows:
        ra, rb = row[a], row[b]
        per_pair = "; ".join(" ".join(f"{v:.2f}" if v is not None else "-" for v in row[f"ratio_{m}"])
                             for m in MEASURES)
        lines.append(
            f"  {row['target']:<6} {row['concurrency']:>4} {_show(ra['certificates_per_second'])} "
            f"{_show(rb['certificates_per_second'])} {_show(row['median_ratio_certificates_per_second'], 6)}   "
            f"{_show(ra['p50'], 7)} {_show(rb['p50'], 7)} {_show(row['median_ratio_p50'], 6)}   "
            f"{_show(ra['p99'], 7)} {_show(rb['p99'], 7)} {_show(row['median_ratio_p99'], 6)}   "
            f"{_show(ra['cpu_ms'], 6)} {_show(rb['cpu_ms'], 6)} {_show(row['median_ratio_cpu_ms'], 6)}   {per_pair}")
        for purge in row["purges"]:
            lines.append(f"         purge: {purge.get('rows_total')} rows in {purge.get('seconds')} s, "
                         f"running during {purge.get('covered_percent', purge.get('overlap_percent'))} % of the measured load"
                         + (" (stopped when the load ended)" if purge.get("stopped_when_load_ended") else ""))
        if ra["failed"] or rb["failed"]:
            lines.append(f"         failed certificates: A {ra['failed']}, B {rb['failed']}; pairs left out of "
                         f"the medians: {', '.join(map(str, row['left_out']))}")
    return "\n".join(lines)


def _show(value: float | None, width: int = 9) -> str:
    return "-".rjust(width) if value is None else f"{value:{width}.2f}"


def complete_pairs(rounds: list[list[dict[str, Any]]]) -> int:
    """Pairs in which both runs issued every certificate (what the medians use)."""
    return sum(1 for pair in rounds
               if all(run.get("targets") and not any(f["failed"] for f in figures(run).values()) for run in pair))


def run_order(number: int) -> tuple[int, int]:
    """A then B in odd pairs, B then A in even ones: the second run of a pair inherits the first
    one's after-effects (PostgreSQL's checkpoint and autovacuum of 600 orders' writes), which made
    every process of B, Pebble included, cost 5-20 % more CPU per certificate when A always ran
    first."""
    return (0, 1) if number % 2 else (1, 0)


def run(args: argparse.Namespace, workdir: Path, info: dict[str, Any]) -> int:
    """The comparison; writes args.json and prints the table."""
    notes: dict[str, Any] = {}
    chosen, cleanup = variants(args, workdir, notes)
    names = [variant.name for variant in chosen]
    rounds: list[list[dict[str, Any]]] = []
    results: dict[str, Any] = {"machine": info, "command": " ".join(["python", "-m", "bench", *args.argv]),
                               "variants": names, "notes": notes, "rounds": rounds}
    try:
        number = 0
        # A pair with failed certificates is measured again, up to as many extra pairs as asked.
        while complete_pairs(rounds) < args.rounds and number < 2 * args.rounds:
            number += 1
            pair: list[dict[str, Any]] = [{}, {}]
            for index in run_order(number):
                variant = chosen[index]
                print(f"bench: pair {number} ({args.rounds} wanted): {variant.name}", file=sys.stderr, flush=True)
                pair[index] = run_once(variant, args, workdir / f"pair{number}-{'ab'[index]}")
            rounds.append(pair)
            results["summary"] = summary(names, rounds)
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        for item in cleanup:
            if isinstance(item, BenchDatabase):
                item.drop()
                shutil.rmtree(item.directory, ignore_errors=True)
            elif isinstance(item, Path) and not args.keep_baseline:
                remove_baseline_tree(item)
    print()
    if "history_fill" in notes:
        fill = notes["history_fill"]
        print(f"history: {fill['orders']} orders filled in {fill['seconds']} s ({sum(fill['rows'].values())} rows)")
    print(table(names, results.get("summary", [])))
    print(f"\nresults: {args.json}   runs: {workdir}/pair*/")
    errors = sum(run.get("errors", 0) for pair in rounds for run in pair)
    return 1 if errors or complete_pairs(rounds) < args.rounds else 0
