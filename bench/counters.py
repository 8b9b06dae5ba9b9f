"""Instructions retired per process, from the CPU's counters (``perf stat``, Linux).

CPU time per certificate grows when other work shares the cores (cache misses, frequency);
instructions per certificate hardly move, so they compare two runs on a busy machine. Optional:
without ``perf`` (``apt-get install -y linux-perf``) or counter access, nothing is reported.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Mapping

PERF = shutil.which("perf")
# How long perf may take to write its counts after SIGINT (seconds).
STOP_TIMEOUT_SECONDS = 10


class InstructionCounters:
    """``perf stat -e instructions`` attached to each process from :meth:`start` to :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int | list[int]]) -> None:
        self.pids = {name: ([pid] if isinstance(pid, int) else list(pid)) for name, pid in pids.items()}
        self._running: dict[str, subprocess.Popen[str]] = {}

    def start(self) -> None:
        if PERF is None:
            return
        for name, pids in self.pids.items():
            if pids:
                self._running[name] = subprocess.Popen(
                    [PERF, "stat", "-x,", "-e", "instructions", "-p", ",".join(map(str, pids))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )

    def stop(self) -> dict[str, int]:
        """Instructions counted per name (names whose count failed are left out)."""
        for process in self._running.values():
            process.send_signal(signal.SIGINT)
        counts = {}
        for name, process in self._running.items():
            try:
                _, errors = process.communicate(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                continue
            for line in errors.splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2].startswith("instructions") and fields[0].isdigit():
                    counts[name] = int(fields[0])
        self._running.clear()
        return counts
