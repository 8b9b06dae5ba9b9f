"""The tables ``python -m bench`` prints, from the results it also writes as JSON."""

from __future__ import annotations

import os
from typing import Any

# The goals of issue 8, checked against the measured figures.
GOAL_CERTS_PER_SECOND = 30.0  # (b) at concurrency 16
GOAL_P50_MS = 250.0  # (b) p50 issuance at concurrency 16
GOAL_RATIO = 0.5  # (a)/(c)
GOAL_NONCES_PER_SECOND = 5000
GOAL_RSS_MB = 150.0
GOAL_CONCURRENCY = 16
ENDPOINT_ORDER = ["newNonce", "newAccount", "newOrder", "authz", "challenge", "authz-poll", "finalize",
                  "order-poll", "certificate", "challenge→valid", "finalize→valid"]


def _fmt(value: Any, width: int = 8) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:{width}.1f}"
    return str(value).rjust(width)


def _levels(target: dict[str, Any]) -> list[dict[str, Any]]:
    return list((target.get("load") or {}).get("levels", []))


def level_of(target: dict[str, Any] | None, concurrency: int) -> dict[str, Any] | None:
    if not target:
        return None
    return next((level for level in _levels(target) if level["concurrency"] == concurrency), None)


def issuance_table(targets: list[dict[str, Any]]) -> str:
    header = (f"  {'target':<34} {'conc':>4} {'certs':>6} {'certs/s':>8} {'p50':>8} {'p95':>8} {'p99':>8} "
              f"{'errors':>6} {'req/cert':>8} {'polls a+o':>9} {'gen CPU':>7}")
    lines = ["Issuance (full flow per certificate; latency in ms)", header]
    for target in targets:
        name = f"({target['key']}) {target['label']}"
        if target.get("error"):
            lines.append(f"  {name:<34} did not run: {target['error'].splitlines()[0]}")
            continue
        for level in _levels(target):
            issuance = level["issuance_ms"]
            polls = f"{level['authz_polls_per_certificate']:.1f}+{level['order_polls_per_certificate']:.1f}"
            errors = len(level["errors"]) + level["failed"]
            lines.append(
                f"  {name:<34} {level['concurrency']:>4} {level['completed']:>6} "
                f"{level['certificates_per_second']:>8.1f} {_fmt(issuance.get('p50'))} {_fmt(issuance.get('p95'))} "
                f"{_fmt(issuance.get('p99'))} {errors:>6} {level['requests_per_certificate']:>8.1f} "
                f"{polls:>9} {level['generator_cpu_percent']:>6.0f}%"
            )
            name = ""
    return "\n".join(lines)


def ratio_lines(targets: list[dict[str, Any]]) -> str:
    by_key = {t["key"]: t for t in targets}
    pebble = by_key.get("c")
    lines = ["Ratios of certificates/s (x)/(c), Pebble alone = 1"]
    if not pebble or not _levels(pebble):
        return "\n".join(lines + ["  (c) did not run: no ratios"])
    for level in _levels(pebble):
        concurrency, base = level["concurrency"], level["certificates_per_second"]
        if level["failed"] or level["errors"] or level["completed"] < level["count"]:
            lines.append(f"  concurrency {concurrency:>3}: - ((c) had errors at this level: no ratio)")
            continue
        parts = []
        for key in ("a", "b"):
            mine = level_of(by_key.get(key), concurrency)
            if mine and base:
                parts.append(f"({key})/(c) = {mine['certificates_per_second'] / base:.2f}")
        lines.append(f"  concurrency {concurrency:>3}: " + ("   ".join(parts) or "-"))
    return "\n".join(lines)


def cpu_table(targets: list[dict[str, Any]], cores: int | None = None) -> str:
    """CPU time per certificate of every process of a target (robust to a busy machine), and
    the throughput that alone would allow if every core did nothing else."""
    cores = cores or os.cpu_count() or 1
    lines = [(f"CPU time per certificate (ms; processes the target runs, its PostgreSQL backends, the load "
              f"generator) and the ceiling it implies on {cores} cores")]
    for target in targets:
        for level in _levels(target):
            cpu = level.get("cpu_ms_per_certificate") or {}
            if not cpu:
                continue
            total = sum(cpu.values())
            parts = "  ".join(f"{name} {value:.1f}" for name, value in cpu.items())
            ceiling = cores * 1000 / total if total else 0.0
            lines.append(f"  ({target['key']}) c={level['concurrency']:<3} total {total:6.1f}  ceiling "
                         f"{ceiling:6.1f} certs/s  |  {parts}")
            instructions = level.get("minstr_per_certificate") or {}
            if instructions:
                lines.append(f"  {'':14}million instructions per certificate: total "
                             f"{sum(instructions.values()):.0f}  |  "
                             + "  ".join(f"{name} {value:.0f}" for name, value in instructions.items()))
    return "\n".join(lines)


def endpoint_table(targets: list[dict[str, Any]]) -> str:
    lines = ["Latency per endpoint at the highest concurrency (ms: p50 / p95 / p99; n requests)"]
    for target in targets:
        levels = _levels(target)
        if not levels:
            continue
        level = levels[-1]
        lines.append(f"  ({target['key']}) {target['label']}, concurrency {level['concurrency']}:")
        endpoints = level["endpoints_ms"]
        for name in ENDPOINT_ORDER + sorted(set(endpoints) - set(ENDPOINT_ORDER)):
            stats = endpoints.get(name)
            if not stats or not stats.get("n"):
                continue
            lines.append(f"    {name:<15} {stats['p50']:>8.1f} / {stats['p95']:>8.1f} / {stats['p99']:>8.1f}"
                         f"   n={stats['n']}")
        seen = level.get("retry_after_seen") or {}
        shown = ", ".join(f"{value} s × {count}" for value, count in sorted(seen.items())) or "none"
        lines.append(f"    Retry-After sent: {shown}; the generator waits min(Retry-After, "
                     f"{level['poll_cap_seconds']} s) before each poll")
    return "\n".join(lines)


def _load(values: Any) -> str:
    return f"{values[0]:.2f}" if values else "-"


def nonce_per_process(nonce: dict[str, Any]) -> int | None:
    """newNonce requests/s per frontend process (the measurement spreads over all of them)."""
    rate = nonce.get("requests_per_second")
    return None if rate is None else round(rate / max(1, nonce.get("processes", 1)))


def process_table(targets: list[dict[str, Any]]) -> str:
    heading = "newNonce (HEAD, keep-alive; all frontend processes and per process) and peak RSS (VmHWM) per process"
    lines = [heading]
    for target in targets:
        if target.get("error") and not target.get("rss_mb"):
            continue
        nonce = target.get("new_nonce") or {}
        if "requests_per_second" in nonce:
            processes = nonce.get("processes", 1)
            per_process = f" = {nonce_per_process(nonce)} per process ×{processes}" if processes > 1 else ""
            nonce_text = (f"{nonce['requests_per_second']:>7} req/s{per_process} ({nonce['tool']}, "
                          f"{nonce['connections']} connections, {nonce['seconds']:.0f} s, "
                          f"non-2xx {nonce.get('non_2xx', 0)}, socket errors {nonce.get('socket_errors', 0)})")
            if nonce.get("server_kinstr_per_request"):
                nonce_text += f"; {nonce['server_kinstr_per_request']:.0f} k instructions per request"
        else:
            nonce_text = f"not measured: {nonce.get('error', '-')[:200]}"
        rss = ", ".join(f"{name} {value} MB" for name, value in (target.get("rss_mb") or {}).items())
        lines.append(f"  ({target['key']}) {target['label']}  (load average before/after: "
                     f"{_load(target.get('load_average_before'))} / {_load(target.get('load_average_after'))})")
        lines.append(f"    newNonce  {nonce_text}")
        lines.append(f"    peak RSS  {rss or '-'}")
    return "\n".join(lines)


def errors_text(targets: list[dict[str, Any]], limit: int = 10) -> str:
    lines = []
    for target in targets:
        for stuck in (target.get("load") or {}).get("stuck_attempts", []):
            lines.append(f"  ({target['key']}) c={stuck['concurrency']}: attempt {stuck['attempt']} stopped after "
                         f"{stuck['completed']} certificates, the server no longer answering; measured again "
                         "on a restarted server (not counted as errors)")
        for level in _levels(target):
            for error in level["errors"][:limit]:
                lines.append(f"  ({target['key']}) c={level['concurrency']} {error['endpoint']}: "
                             f"HTTP {error['status']} {error.get('problem') or error.get('error')}")
            if len(level["errors"]) > limit:
                lines.append(f"  ({target['key']}) c={level['concurrency']}: {len(level['errors']) - limit} more")
        setup = (target.get("load") or {}).get("setup_error")
        if setup:
            lines.append(f"  ({target['key']}) account set-up failed: {setup}")
    return "Errors (problem documents)\n" + ("\n".join(lines) if lines else "  none")


def total_errors(targets: list[dict[str, Any]]) -> int:
    count = 0
    for target in targets:
        if target.get("error") or (target.get("load") or {}).get("setup_error"):
            count += 1
        for level in _levels(target):
            count += len(level["errors"]) + len(level.get("warmup_errors", [])) + level["failed"]
            count += level["count"] - level["completed"] - level["failed"]
    return count


def goals(targets: list[dict[str, Any]]) -> str:
    """Issue 8's goals, each met or not (at concurrency 16, or the highest level measured)."""
    by_key = {t["key"]: t for t in targets}

    def at_goal_level(key: str) -> dict[str, Any] | None:
        target = by_key.get(key)
        levels = _levels(target) if target else []
        return level_of(target, GOAL_CONCURRENCY) or (levels[-1] if levels else None)

    def verdict(ok: bool | None) -> str:
        return "n/a    " if ok is None else ("met    " if ok else "NOT met")

    lines = ["Goals (issue 8)"]
    b = at_goal_level("b")
    lines.append(f"  {verdict(None if b is None else b['certificates_per_second'] >= GOAL_CERTS_PER_SECOND)}  "
                 f"(b) ≥ {GOAL_CERTS_PER_SECOND:.0f} certificates/s at concurrency {GOAL_CONCURRENCY}: "
                 f"{b['certificates_per_second'] if b else '-'} (at {b['concurrency'] if b else '-'})")
    p50 = b["issuance_ms"].get("p50") if b else None
    lines.append(f"  {verdict(None if p50 is None else p50 < GOAL_P50_MS)}  (b) p50 issuance < {GOAL_P50_MS:.0f} ms: "
                 f"{p50 if p50 is not None else '-'} ms")
    a, c = at_goal_level("a"), at_goal_level("c")
    clean = c is not None and not c["failed"] and not c["errors"] and c["completed"] == c["count"]
    ratio = (a["certificates_per_second"] / c["certificates_per_second"]
             if a and c and clean and c["certificates_per_second"] else None)
    lines.append(f"  {verdict(None if ratio is None else ratio >= GOAL_RATIO)}  (a)/(c) ≥ {GOAL_RATIO}: "
                 f"{f'{ratio:.2f}' if ratio is not None else '-'}")
    for key in ("a", "b"):
        nonce = (by_key.get(key) or {}).get("new_nonce") or {}
        rate = nonce_per_process(nonce)
        lines.append(f"  {verdict(None if rate is None else rate >= GOAL_NONCES_PER_SECOND)}  ({key}) newNonce ≥ "
                     f"{GOAL_NONCES_PER_SECOND} req/s per frontend process: {rate if rate is not None else '-'}")
    rss = [(key, name, value) for key in ("a", "b")
           for name, value in ((by_key.get(key) or {}).get("rss_mb") or {}).items() if value is not None]
    worst = max(rss, key=lambda item: item[2]) if rss else None
    lines.append(f"  {verdict(None if worst is None else worst[2] < GOAL_RSS_MB)}  < {GOAL_RSS_MB:.0f} MB RSS per "
                 f"service process: largest {f'({worst[0]}) {worst[1]} {worst[2]} MB' if worst else '-'}")
    errors = total_errors(targets)
    lines.append(f"  {verdict(errors == 0)}  zero errors: {errors}")
    return "\n".join(lines)


def full_report(targets: list[dict[str, Any]]) -> str:
    return "\n\n".join([issuance_table(targets), ratio_lines(targets), cpu_table(targets), endpoint_table(targets),
                        process_table(targets), errors_text(targets), goals(targets)])
