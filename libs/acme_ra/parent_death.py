"""A child process that dies with its parent (Linux ``PR_SET_PDEATHSIG``).

Used by the frontend's forked workers (production) and by the dev supervisor's children
(``acme_ra_tools.supervisor``): neither outlives the process that started it, even when that
process is killed with SIGKILL. Elsewhere than Linux it does nothing (:data:`SUPPORTED` is false).
"""

from __future__ import annotations

import ctypes
import signal
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1

try:  # loaded here, not in the forked child: only the prctl call happens between fork and exec
    _LIBC: Any = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:  # pragma: no cover - no libc to speak of
    _LIBC = None

# Whether die_with_parent() does anything on this system.
SUPPORTED = _LIBC is not None


def die_with_parent() -> None:
    """In a child (before exec, or a forked worker): SIGTERM when the parent dies, even by
    SIGKILL (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
