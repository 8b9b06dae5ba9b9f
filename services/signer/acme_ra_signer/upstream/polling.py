"""How long to wait before looking again at something an upstream CA is still working on
(an order being signed, an authorization being validated)."""

from __future__ import annotations

# Polling without a Retry-After: first wait, growth factor, longest wait (seconds). The first
# wait is short because a CA that answers finalize with "processing" (Pebble, step-ca) mostly has
# the certificate a few milliseconds later; doubling from 50 ms, a CA that takes seconds costs only
# two or three polls more than doubling from 250 ms did (waits 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, ...).
POLL_FIRST_SECONDS = 0.05
POLL_FACTOR = 2.0
POLL_MAX_SECONDS = 15.0
# A Retry-After shorter than the backoff above is raised to it, but never beyond this (seconds).
# Retry-After counts whole seconds, so the floor changes only "0" and dates less than a second
# away, which mean "now": a CA repeating them is polled on the backoff (settling at one poll a
# second), not in a tight loop; any Retry-After of a second or more is honoured as given.
RETRY_AFTER_FLOOR_MAX_SECONDS = 1.0
# The longest Retry-After honoured as is (seconds); longer ones hand the job back to the queue.
RETRY_AFTER_MAX_SECONDS = 300.0


def poll_delay(retry_after: float | None, attempt: int) -> float:
    """Seconds to wait before looking again at something the upstream is still working on:
    its ``Retry-After`` (floored, clamped), else an exponential backoff from the ``attempt``-th
    look (0 for the first)."""
    backoff = min(POLL_FIRST_SECONDS * POLL_FACTOR**attempt, POLL_MAX_SECONDS)
    if retry_after is None:
        return backoff
    return min(max(retry_after, min(backoff, RETRY_AFTER_FLOOR_MAX_SECONDS)), RETRY_AFTER_MAX_SECONDS)
