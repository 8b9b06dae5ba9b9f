"""Target (m): acme-ra with the lab CA, its validator corroborating every validation with N
remote perspectives (``--perspectives N``, default 3; multi-perspective corroboration,
docs/perspectives.md). Run it with (a) in the same run to see what corroboration costs:

    make bench BENCH_ARGS='--targets a,m --perspectives 3'

The perspectives are ``python -m acme_ra_validator`` processes with ``ACME_RA_VALIDATOR_ROLE=remote``
on the target's nats-server (as the ``perspective`` NATS user); their CPU time counts in the
target's CPU per certificate. On one machine they resolve ``*.bench.localhost`` as the validator
does (loopback, no DNS), so the figure is the cost of the bus round trips and the extra checks.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acme_ra_tools.lab_perspectives import perspective_env
from acme_ra_tools.lab_tls import TlsMaterial
from acme_ra_tools.supervisor import READY_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS, Child, free_port, http_ok, wait_until
from bench.targets import AcmeRaTarget

KEY = "m"
DEFAULT_PERSPECTIVES = 3


class PerspectivesTarget(AcmeRaTarget):
    """(a) with ``count`` remote perspectives asked for every check."""

    def __init__(self, count: int, workdir: Path, tls: TlsMaterial, http01_port: int,
                 database_server_url: str | None, extra_env: Mapping[str, str] | None = None) -> None:
        env = {**(extra_env or {}), "ACME_RA_MPIC_REMOTE_PERSPECTIVES": str(count)}
        super().__init__(KEY, "lab", workdir, tls, http01_port, database_server_url, env)
        self.count = count
        self.label = f"acme-ra, lab CA, {count} remote perspectives"
        self.perspectives: dict[str, Child] = {}

    def start(self) -> None:
        super().start()
        assert self.topology is not None and self.log_dir is not None
        for number in range(1, self.count + 1):
            name = f"perspective-{number}"
            listen = f"127.0.0.1:{free_port()}"
            env = {**self.topology.service_env("perspective"), **perspective_env(number, listen)}
            child = Child(name, [sys.executable, "-m", "acme_ra_validator"], env, self.log_dir / f"{name}.log", None)
            self.perspectives[name] = child
            wait_until(name, functools.partial(http_ok, f"http://{listen}/readyz"), [child],
                       timeout=READY_TIMEOUT_SECONDS, stopping=lambda: False)

    def stop(self) -> None:
        for child in self.perspectives.values():
            child.terminate()
        for child in self.perspectives.values():
            child.wait_stopped(STOP_TIMEOUT_SECONDS)
        self.perspectives.clear()
        super().stop()

    def service_pids(self) -> dict[str, int]:
        pids = super().service_pids()
        pids.update({name: child.process.pid for name, child in self.perspectives.items()})
        return pids


def cost_lines(targets: list[dict[str, Any]]) -> str:
    """CPU per certificate of (m) against (a), level by level: what corroboration costs."""
    by_key = {target["key"]: target for target in targets}
    plain, mpic = by_key.get("a"), by_key.get(KEY)
    if not plain or not mpic:
        return ""
    lines = [f"Corroboration: CPU time per certificate, ({KEY}) {mpic['label']} against (a)"]
    plain_levels = {level["concurrency"]: level for level in (plain.get("load") or {}).get("levels", [])}
    for level in (mpic.get("load") or {}).get("levels", []):
        base = plain_levels.get(level["concurrency"])
        if not base or not level.get("cpu_ms_per_certificate") or not base.get("cpu_ms_per_certificate"):
            continue
        with_mpic = sum(level["cpu_ms_per_certificate"].values())
        without = sum(base["cpu_ms_per_certificate"].values())
        remote = sum(v for k, v in level["cpu_ms_per_certificate"].items() if k.startswith("perspective-"))
        lines.append(f"  c={level['concurrency']:<3} (a) {without:6.1f} ms  ({KEY}) {with_mpic:6.1f} ms  "
                     f"(+{with_mpic - without:.1f} ms, x{with_mpic / without:.2f}; the perspectives {remote:.1f} ms)")
    return "\n".join(lines)
