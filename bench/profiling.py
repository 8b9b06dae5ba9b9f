"""Profiles of the services under load: ``py-spy record`` on each process while the generator
runs (``python -m bench --profile DIR``), then a summary of the collapsed stacks.

The raw files (``DIR/<target>-<service>.txt``, Brendan Gregg's collapsed format) open in
speedscope (https://www.speedscope.app) or ``flamegraph.pl``. ``python -m bench.profiling FILE``
prints the summary of one again. py-spy is not a project dependency: ``pip install py-spy``.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Samples per second (py-spy's default is 100).
SAMPLE_RATE = 100
# How many entries each table of the summary shows.
TOP = 15
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")

# Where a leaf frame's time goes, by the file it is in (first match wins).
CATEGORIES: list[tuple[str, str]] = [
    ("/acme_ra_frontend/", "acme-ra frontend code"),
    ("/acme_ra_validator/", "acme-ra validator code"),
    ("/acme_ra_signer/", "acme-ra signer code"),
    ("/acme_ra/", "acme-ra shared library"),
    ("/sqlalchemy/", "SQLAlchemy"),
    ("/asyncpg/", "asyncpg"),
    ("/aiosqlite/", "aiosqlite / sqlite3"),
    ("/sqlite3/", "aiosqlite / sqlite3"),
    ("/uvicorn/", "uvicorn"),
    ("/starlette/", "starlette / FastAPI"),
    ("/fastapi/", "starlette / FastAPI"),
    ("/pydantic", "pydantic"),
    ("/josepy/", "josepy / cryptography"),
    ("/cryptography/", "josepy / cryptography"),
    ("/acme/", "certbot acme library"),
    ("/nats/", "nats-py"),
    ("/httpx/", "httpx / httpcore"),
    ("/httpcore/", "httpx / httpcore"),
    ("/h11/", "httpx / httpcore"),
    ("/dns/", "dnspython"),
    ("/opentelemetry/", "OpenTelemetry"),
    ("/prometheus_client/", "prometheus_client"),
    ("/logging/", "logging"),
    ("/ssl.py", "ssl"),
    ("/asyncio/", "asyncio"),
    ("/uvloop/", "asyncio"),
    ("/json/", "json"),
    ("/contextlib.py", "contextlib"),
    ("<frozen", "Python runtime"),
    ("/typing.py", "Python runtime"),
    ("/enum.py", "Python runtime"),
    ("/greenlet/", "greenlet (SQLAlchemy async bridge)"),
]


def available() -> str | None:
    """The py-spy binary (beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


@dataclass
class Recording:
    """py-spy recording some processes until :meth:`stop`."""

    directory: Path
    prefix: str
    pids: Mapping[str, int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> None:
        binary = available()
        if binary is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            output = self.directory / f"{self.prefix}-{name}.txt"
            self.processes[name] = subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE), "--format", "raw",
                 "--nonblocking", "--subprocesses", "--output", str(output)],  # the frontend's workers too
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )

    def stop(self) -> dict[str, Path]:
        """Stop recording (py-spy writes its file on SIGINT); returns the files written."""
        for process in self.processes.values():
            process.send_signal(signal.SIGINT)
        files = {}
        for name, process in self.processes.items():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            path = self.directory / f"{self.prefix}-{name}.txt"
            if path.is_file():
                files[name] = path
        return files


def _frame_key(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["name"], match["file"]


def _short(name: str, path: str) -> str:
    for marker in ("site-packages/", "/libs/", "/services/frontend/", "/services/validator/", "/services/signer/",
                   "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def category(path: str) -> str:
    path = path if path.startswith("/") else "/" + path  # py-spy shortens site-packages paths
    for marker, name in CATEGORIES:
        if marker in path:
            return name
    return "other"


def summarise(path: Path, top: int = TOP) -> dict[str, Any]:
    """Samples, then the hottest frames by self and by inclusive time, and self time by library."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours: Counter[str] = Counter()  # acme-ra's own functions, inclusive
    by_category: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        leaf_name, leaf_file = frames[-1]
        self_time[_short(leaf_name, leaf_file)] += count
        by_category[category(leaf_file)] += count
        for key in {_short(name, file) for name, file in frames}:
            inclusive[key] += count
        for key in {_short(name, file) for name, file in frames if "acme_ra" in file and "__main__" not in file}:
            ours[key] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(key, round(100 * n / total, 1)) for key, n in counter.most_common(top)] if total else []

    return {"samples": total, "self": share(self_time), "inclusive": share(inclusive),
            "by_library": share(by_category), "acme_ra_inclusive": share(ours)}


def format_summary(title: str, summary: dict[str, Any]) -> str:
    lines = [f"{title}: {summary['samples']} samples at {SAMPLE_RATE} Hz (on-CPU only)"]
    for heading, key in (("self time by library", "by_library"), ("hottest frames, self", "self"),
                         ("acme-ra's own functions, inclusive", "acme_ra_inclusive")):
        lines.append(f"  {heading}:")
        lines += [f"    {pct:5.1f}%  {name}" for name, pct in summary[key]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m bench.profiling FILE...", file=sys.stderr)
        return 2
    for name in args:
        print(format_summary(name, summarise(Path(name))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
