"""acme_ra.parent_death: a child that called die_with_parent() is gone soon after its parent is
killed with SIGKILL (what the frontend's forked workers and the dev supervisor's children rely
on); a child that did not call it outlives its parent (the check can fail)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from acme_ra.parent_death import SUPPORTED

# The parent: starts `sleep`, with or without die_with_parent before exec, prints its pid, waits.
PARENT = """
import subprocess, sys, time
from acme_ra.parent_death import die_with_parent
child = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent if sys.argv[1] == "yes" else None)
print(child.pid, flush=True)
time.sleep(60)
"""
GONE_WITHIN_SECONDS = 5.0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def orphan_after_parent_killed(die_with_parent: bool) -> tuple[int, bool]:
    """Kill the parent; the child's pid and whether it was still alive GONE_WITHIN_SECONDS later."""
    with subprocess.Popen([sys.executable, "-c", PARENT, "yes" if die_with_parent else "no"],
                          stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
    deadline = time.monotonic() + GONE_WITHIN_SECONDS
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, alive(child)


def test_a_child_dies_with_its_killed_parent_only_when_asked() -> None:
    assert SUPPORTED
    _, survived = orphan_after_parent_killed(die_with_parent=True)
    assert not survived
    orphan, survived = orphan_after_parent_killed(die_with_parent=False)
    try:
        assert survived
    finally:
        if alive(orphan):
            os.kill(orphan, signal.SIGKILL)
