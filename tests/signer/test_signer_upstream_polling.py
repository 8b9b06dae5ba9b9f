"""How long the acme upstream driver waits between looks at an order or authorization the
upstream CA is still working on (``upstream.polling.poll_delay``)."""

from __future__ import annotations

import itertools

import pytest

from acme_ra_signer.upstream.polling import (
    POLL_FACTOR,
    POLL_FIRST_SECONDS,
    POLL_MAX_SECONDS,
    RETRY_AFTER_FLOOR_MAX_SECONDS,
    RETRY_AFTER_MAX_SECONDS,
    poll_delay,
)


def polls_until(ready_after: float) -> int:
    """Looks taken (one at once, then one after each wait) until a CA that needs
    ``ready_after`` seconds has the answer, with no Retry-After."""
    waited = 0.0
    for attempt in itertools.count():
        if waited >= ready_after:
            return attempt + 1
        waited += poll_delay(None, attempt)
    raise AssertionError("unreachable")


def test_without_retry_after_the_first_wait_is_short_and_then_doubles_up_to_the_maximum() -> None:
    assert POLL_FIRST_SECONDS <= 0.1  # a CA done in milliseconds costs no quarter of a second
    delays = [poll_delay(None, attempt) for attempt in range(12)]
    assert delays[0] == POLL_FIRST_SECONDS
    assert delays[1] == POLL_FIRST_SECONDS * POLL_FACTOR
    assert all(later >= earlier for earlier, later in itertools.pairwise(delays))
    assert max(delays) == POLL_MAX_SECONDS == delays[-1]


@pytest.mark.parametrize(("ready_after", "most_polls"), [(0.01, 2), (1.0, 6), (3.0, 7), (10.0, 9), (60.0, 13)])
def test_a_slow_ca_gets_only_a_handful_of_polls(ready_after: float, most_polls: int) -> None:
    assert polls_until(ready_after) <= most_polls


@pytest.mark.parametrize("retry_after", [1.0, 3.0, 42.0, RETRY_AFTER_MAX_SECONDS])
def test_a_retry_after_of_a_second_or_more_is_honoured_as_given(retry_after: float) -> None:
    for attempt in (0, 3, 10, 50):
        assert poll_delay(retry_after, attempt) == retry_after


def test_a_retry_after_of_now_is_polled_on_the_backoff_never_in_a_tight_loop() -> None:
    delays = [poll_delay(0.0, attempt) for attempt in range(12)]
    assert delays[0] == POLL_FIRST_SECONDS
    assert delays[1] == POLL_FIRST_SECONDS * POLL_FACTOR
    assert delays[-1] == RETRY_AFTER_FLOOR_MAX_SECONDS <= 1.0  # at most a second: "now" is honoured
    assert poll_delay(0.3, 0) == 0.3  # a date a fraction of a second away: waited for
    assert poll_delay(0.3, 10) == RETRY_AFTER_FLOOR_MAX_SECONDS


def test_a_retry_after_beyond_the_maximum_is_clamped() -> None:
    assert poll_delay(RETRY_AFTER_MAX_SECONDS * 10, 0) == RETRY_AFTER_MAX_SECONDS
