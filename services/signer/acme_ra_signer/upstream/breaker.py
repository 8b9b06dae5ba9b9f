"""A circuit breaker per upstream: whether orders should be sent to it now.

One failure does not make an upstream unavailable (a CA drops a connection now and then); a run
of them does. The breaker counts consecutive ``UpstreamUnavailable`` outcomes (connection
refused, timeouts, 5xx, ``serverInternal``), never refusals (``UpstreamRejected``: the order's
fault, sometimes decided without asking the upstream, so no verdict either way)::

    closed ──N failures in a row──▶ open ──cool-down──▶ half-open ──probe succeeds──▶ closed
                                      ▲                     │
                                      ╰───probe fails───────╯

While open, the driver skips the upstream for orders that may move (nothing finalized there).
After the cool-down one probe is let through: the driver's health check or the next real
request, whichever comes first; its outcome closes or re-opens the breaker. Each signer keeps
its own breakers (in memory): they are a routing hint, never a correctness guarantee, which the
journal keeps (``may_move``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from acme_ra_signer import metrics

# Consecutive unavailability failures that open the breaker. Three: one dropped connection or a
# 503 during a CA's deploy is normal and must not move orders; three in a row (each already
# after the HTTP client's own timeout) mean the CA is down for now.
FAILURES_TO_OPEN = 3
# How long an open breaker waits before letting one probe through (seconds). Long enough not to
# hammer a CA that is down (every order meanwhile goes to the next upstream, at no cost), short
# enough that orders go back to the first upstream within a minute of its return.
COOL_DOWN_SECONDS = 30.0
# A probe let through that never reports (its job died) is given up after this long (seconds),
# and the next request probes again.
PROBE_TIMEOUT_SECONDS = 120.0


class State(enum.IntEnum):
    """The states, valued as ``acme_ra_upstream_breaker_state`` reports them."""

    closed = 0
    half_open = 1
    open = 2


class Breaker:
    """The breaker of one upstream (see the module's docstring)."""

    def __init__(
        self,
        upstream: str,
        *,
        failures_to_open: int = FAILURES_TO_OPEN,
        cool_down_seconds: float = COOL_DOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.failures_to_open = failures_to_open
        self.cool_down_seconds = cool_down_seconds
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing_since: float | None = None
        self.last_error = ""
        self._publish()

    @property
    def state(self) -> State:
        """The state now (an open breaker half-opens by time alone: the gauge follows here)."""
        state = self._state()
        metrics.UPSTREAM_BREAKER_STATE.labels(self.upstream).set(int(state))
        return state

    def _state(self) -> State:
        if self.opened_at is None:
            return State.closed
        if self.clock() - self.opened_at < self.cool_down_seconds:
            return State.open
        return State.half_open

    def allow(self) -> bool:
        """Whether a request may go to the upstream now; in half-open, true once (the probe)
        until its outcome is reported."""
        state = self.state
        if state is State.closed:
            return True
        if state is State.open:
            return False
        now = self.clock()
        if self.probing_since is not None and now - self.probing_since < PROBE_TIMEOUT_SECONDS:
            return False
        self.probing_since = now
        self._publish()
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing_since = None
        self.last_error = ""
        self._publish()

    def release(self) -> None:
        """The request let through ended without a verdict on the upstream's health (the order
        was refused): a half-open breaker lets the next request probe."""
        self.probing_since = None

    def failure(self, error: str = "") -> None:
        self.failures += 1
        self.last_error = error
        if self.opened_at is not None or self.failures >= self.failures_to_open:
            # A failed probe (or a failure while open) starts a new cool-down.
            self.opened_at = self.clock()
            self.probing_since = None
        self._publish()

    def describe(self) -> dict[str, object]:
        state = self.state
        described: dict[str, object] = {"state": state.name.replace("_", "-"), "consecutive_failures": self.failures}
        if state is not State.closed:
            described["last_error"] = self.last_error
            assert self.opened_at is not None
            described["retry_in_seconds"] = round(max(0.0, self.opened_at + self.cool_down_seconds - self.clock()), 1)
        return described

    def _publish(self) -> None:
        self.state  # noqa: B018 - reading it publishes it
