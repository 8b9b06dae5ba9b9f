"""``python -m bench --upstream-validation`` (``make bench-upstream``): how long the upstream CA
takes to validate what the signer proves to it, per method, against a Pebble that validates for
real.

For each method in turn: start acme-ra as target (b) does (``make dev``'s topology, a Pebble
upstream with EAB), but with that Pebble validating for real and the signer proving each name to
it; run the load generator (``bench.load``: the clients prove their names to acme-ra by http-01);
then read the signer's ``upstream validation`` events — one per upstream validation, from
publishing the response to the upstream's verdict, the time the
``acme_ra_upstream_validation_seconds`` histogram observes — and report p50/p95 per method.

Methods (``METHODS``; add one with its setup, and it is measured):

- ``dns-01``: RFC 2136 with TSIG to a BIND9 (``tests/support/bind.py``) authoritative for the
  names the generator orders; Pebble asks BIND's resolver.
- ``http-01``: the frontends' central responder (``ACME_RA_UPSTREAM_HTTP01_LISTEN``) on the port
  Pebble fetches from; BIND answers every name with 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.latency import summary
from bench.targets import ACME_RA_NAME_SUFFIX, AcmeRaTarget, tls_material

# The signer's event for one upstream validation (services/signer/acme_ra_signer/upstream/acme.py).
VALIDATION_EVENT = "upstream validation"

Generator = Callable[[AcmeRaTarget, argparse.Namespace, Path, int, list[int]], dict[str, Any]]


class Method:
    """How the signer proves names to the upstream by one method, and what that needs running."""

    name = ""

    def unsupported(self) -> str | None:
        """Why this build cannot measure the method, or None."""
        return None

    def start(self, workdir: Path) -> tuple[str, dict[str, str]]:
        """Start what the method needs: (the resolver Pebble asks, the signer's environment)."""
        raise NotImplementedError

    def stop(self) -> None:
        return None

    # The port the upstream fetches http-01 from, when the method serves it (else any).
    pebble_http01_port: int | None = None


class Dns01(Method):
    name = "dns-01"

    def __init__(self) -> None:
        self.bind: Any = None

    def start(self, workdir: Path) -> tuple[str, dict[str, str]]:
        from tests.support.bind import Bind, Zone  # the suite's BIND9 (named -g, tsig-keygen)

        self.bind = Bind(workdir / "bind", [Zone(ACME_RA_NAME_SUFFIX)])
        return self.bind.resolver_address, {
            "ACME_RA_UPSTREAM_AUTHZ_STRATEGY": "dns-01",
            "ACME_RA_UPSTREAM_DNS_RFC2136_SERVER": self.bind.address,
            "ACME_RA_UPSTREAM_DNS_TSIG_KEY_NAME": self.bind.key_name,
            "ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE": str(self.bind.secret_file),
            "ACME_RA_UPSTREAM_DNS_NAMESERVERS": self.bind.address,
        }

    def stop(self) -> None:
        if self.bind is not None:
            self.bind.stop()


class Http01(Method):
    name = "http-01"

    def __init__(self) -> None:
        self.bind: Any = None

    def start(self, workdir: Path) -> tuple[str, dict[str, str]]:
        from acme_ra_tools.supervisor import free_port
        from tests.support.bind import Bind, Zone  # every name of the zone: 127.0.0.1

        self.bind = Bind(workdir / "bind", [Zone(ACME_RA_NAME_SUFFIX, updatable=False)])
        self.pebble_http01_port = free_port()
        return self.bind.resolver_address, {
            "ACME_RA_UPSTREAM_AUTHZ_STRATEGY": "http-01",
            "ACME_RA_UPSTREAM_HTTP01_LISTEN": f"127.0.0.1:{self.pebble_http01_port}",
        }

    def stop(self) -> None:
        if self.bind is not None:
            self.bind.stop()


METHODS: dict[str, type[Method]] = {"dns-01": Dns01, "http-01": Http01}


def validation_events(log: Path) -> list[dict[str, Any]]:
    """The signer's ``upstream validation`` events, from its JSON log lines."""
    events = []
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        if line.startswith("{") and f'"{VALIDATION_EVENT}"' in line:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("msg") == VALIDATION_EVENT:
                events.append(event)
    return events


def measure(method: Method, args: argparse.Namespace, workdir: Path, http01_port: int,
            run_generator: Generator) -> dict[str, Any]:
    result: dict[str, Any] = {"method": method.name}
    extra_env = dict(item.split("=", 1) for item in args.ra_env)
    database = None if args.database_url == "sqlite" else args.database_url
    target: AcmeRaTarget | None = None
    try:
        resolver, env = method.start(workdir / "dns")
        target = AcmeRaTarget(f"upstream-{method.name}", "pebble", workdir / "acme-ra", tls_material(workdir / "tls"),
                              http01_port, database, {**extra_env, **env}, pebble_dns_server=resolver,
                              pebble_http01_port=method.pebble_http01_port)
        target.label = f"acme-ra, Pebble validating {method.name}"
        target.start()
        load = run_generator(target, args, workdir, http01_port, args.level_list)
        result["load"] = load
        assert target.log_dir is not None  # started
        events = validation_events(target.log_dir / "signer.log")
        valid = [e for e in events if e.get("outcome") == "valid"]
        result["validations"] = summary(float(e["duration_ms"]) / 1000 for e in valid)
        result["failed_validations"] = len(events) - len(valid)
        # Measured and warm-up certificates: every one was validated upstream.
        result["certificates"] = sum(level["completed"] + level["warmup"] - len(level.get("warmup_errors", []))
                                     for level in load.get("levels", []))
    except Exception as error:  # noqa: BLE001 - reported, and the run goes on with the next method
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        if target is not None:
            result["log_dir"] = str(getattr(target, "log_dir", "") or "")
            try:
                target.stop()
            except Exception as error:  # noqa: BLE001 - reported
                result.setdefault("error", f"stop failed: {error}")
        method.stop()
    return result


def errors(results: list[dict[str, Any]]) -> int:
    count = 0
    for entry in results:
        if entry.get("skipped"):
            continue
        load = entry.get("load") or {}
        count += bool(entry.get("error")) + bool(load.get("setup_error")) + entry.get("failed_validations", 0)
        for level in load.get("levels", []):
            count += len(level["errors"]) + len(level.get("warmup_errors", [])) + level["failed"]
            count += level["count"] - level["completed"] - level["failed"]
        if not entry.get("error") and entry.get("validations", {}).get("n", 0) == 0:
            count += 1  # nothing was validated upstream: the measurement measured nothing
    return count


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        (
            "Upstream validation, publish -> the upstream's verdict (Pebble validating for real; "
            f"concurrency {','.join(map(str, args.level_list))}, {args.count} certificates per level)"
        ),
        f"  {'method':<8} {'validations':>11} {'failed':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}",
    ]
    for entry in results:
        if entry.get("skipped"):
            lines.append(f"  {entry['method']:<8} skipped: {entry['skipped']}")
        elif entry.get("error"):
            lines.append(f"  {entry['method']:<8} failed: {entry['error']}")
        else:
            stats = entry["validations"]
            lines.append(
                f"  {entry['method']:<8} {stats['n']:>11} {entry['failed_validations']:>6} "
                f"{stats.get('p50', float('nan')):>8.1f} {stats.get('p95', float('nan')):>8.1f} "
                f"{stats.get('max', float('nan')):>8.1f}"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace, workdir: Path, http01_port: int, run_generator: Generator) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for name in args.upstream_method_list:
        method = METHODS[name]()
        reason = method.unsupported()
        if reason:
            results.append({"method": name, "skipped": reason})
            continue
        print(f"bench: upstream validation by {name}: starting", flush=True)
        results.append(measure(method, args, workdir / name, http01_port, run_generator))
    return results
