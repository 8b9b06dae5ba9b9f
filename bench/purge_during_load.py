"""``python -m bench --purge-during-load``: ``acme-ra db purge`` runs while the generator loads the
target (what a purge of a large history costs the requests of the moment; bench/compare.py). It
purges at its configured pace (ACME_RA_PURGE_SHARE) and is stopped (SIGTERM: between two batches)
when the load ends; the report says how many rows it deleted by then."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

# The retention the purge applies (ACME_RA_RETENTION_DAYS; the default of the setting).
RETENTION_DAYS = "30"
# How long the purge may take to stop after the load ended (seconds).
FINISH_TIMEOUT_SECONDS = 60
# A purge is asked to stop no sooner than this after it started (seconds): before, it may not
# listen for SIGTERM yet (Python starting, the command's imports), and SIGTERM would kill it.
SIGNAL_AFTER_SECONDS = 5.0


class PurgeDuringLoad:
    """Started when the generator starts; ``finish`` when it ended: rows, seconds, and the share of
    the measured load (the levels' wall time, the last part of the generator's run) the purge
    covered."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.process: subprocess.Popen[str] | None = None
        self.started = self.load_ended = 0.0

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("ACME_RA_")}
        env.update({"ACME_RA_DATABASE_URL": self.database_url, "ACME_RA_RETENTION_DAYS": RETENTION_DAYS})
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", "acme_ra_tools.cli", "db", "purge", "--json"],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, measured_seconds: float) -> dict[str, Any]:
        assert self.process is not None
        self.load_ended = time.monotonic()
        finished = self.process.poll() is not None
        if not finished:
            time.sleep(max(0.0, self.started + SIGNAL_AFTER_SECONDS - time.monotonic()))
            self.process.terminate()  # acme-ra db purge stops between two batches and reports
        try:
            out, err = self.process.communicate(timeout=FINISH_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        seconds = time.monotonic() - self.started if not finished else None
        try:
            report = json.loads(out)
        except ValueError:
            return {"error": (err or out)[-2000:], "returncode": self.process.returncode}
        purge_seconds = float(report.get("seconds") or seconds or 0.0)
        measured_from = self.load_ended - measured_seconds
        covered = max(0.0, min(self.started + purge_seconds, self.load_ended) - max(self.started, measured_from))
        return {"rows": report.get("rows"), "rows_total": sum((report.get("rows") or {}).values()),
                "seconds": round(purge_seconds, 1), "finished_before_load_ended": finished,
                "stopped_when_load_ended": bool(report.get("stopped")),
                "covered_percent": round(100 * covered / measured_seconds, 1) if measured_seconds else None}
