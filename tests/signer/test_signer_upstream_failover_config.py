"""Ordered upstream lists (failover) in ACME_RA_CONFIG_FILE, and the circuit breaker's states."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from acme_ra_signer.upstream.breaker import COOL_DOWN_SECONDS, FAILURES_TO_OPEN, Breaker, State
from acme_ra_signer.upstream.catalog import UpstreamConfigError, load_catalog

from .test_signer_upstream_catalog import settings

UPSTREAMS = """
upstreams:
  a: {directory_url: "https://a.test/dir"}
  b: {directory_url: "https://b.test/dir"}
  c: {directory_url: "https://c.test/dir"}
"""


def state_of(breaker: Breaker) -> State:
    """The breaker's state now (a call, so that mypy does not keep an earlier narrowing)."""
    return breaker.state


def test_ordered_lists_beside_the_single_forms(tmp_path: Path) -> None:
    config = tmp_path / "acme-ra.yaml"
    config.write_text(
        UPSTREAMS
        + """
default_upstreams: [b, a]
profiles:
  tlsserver: {upstreams: [c, a]}
  client: {upstream: a}
  plain: c
provisioners:
  ecc: {upstreams: [a, c, b]}
"""
    )
    catalog = load_catalog(settings(tmp_path, config_file=config))
    assert catalog.candidates(None, None) == ("b", "a") and catalog.default == "b"
    assert catalog.select(None, None).name == "b"
    assert catalog.candidates("ecc", "tlsserver") == ("c", "a")
    assert catalog.candidates("ecc", "client") == ("a",)
    assert catalog.candidates("ecc", "plain") == ("c",)
    assert catalog.candidates("ecc", None) == ("a", "c", "b")
    assert catalog.candidates("other", "unknown") == ("b", "a")


def test_the_single_default_upstream_stays_valid(tmp_path: Path) -> None:
    config = tmp_path / "acme-ra.toml"
    config.write_text(
        '''default_upstream = "c"
[upstreams.a]
directory_url = "https://a.test/dir"
[upstreams.c]
directory_url = "https://c.test/dir"
[profiles.p]
upstreams = ["a", "c"]
'''
    )
    catalog = load_catalog(settings(tmp_path, config_file=config))
    assert catalog.candidates(None, None) == ("c",)
    assert catalog.candidates(None, "p") == ("a", "c")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default_upstream: a\ndefault_upstreams: [a, b]\n",
         "default_upstreams: give default_upstream or default_upstreams, not both"),
        ("default_upstreams: [a, x]\n", "default_upstreams[1]: no upstream named 'x'"),
        ("default_upstreams: []\n", "default_upstreams: names at least one upstream"),
        ("default_upstreams: [a, b, a]\n", "default_upstreams[2]: 'a' is listed twice"),
        ("default_upstreams: a\n", "default_upstreams: Input should be a valid list"),
        ("default_upstream: a\nprofiles:\n  p: {upstream: a, upstreams: [a, b]}\n",
         "profiles.p.upstreams: give profiles.p.upstream or profiles.p.upstreams, not both"),
        ("default_upstream: a\nprofiles:\n  p: {upstreams: [b, nope]}\n",
         "profiles.p.upstreams[1]: no upstream named 'nope'"),
        ("default_upstream: a\nprovisioners:\n  ecc: {upstreams: [nope]}\n",
         "provisioners.ecc.upstreams[0]: no upstream named 'nope'"),
        ("default_upstream: a\nprovisioners:\n  ecc: {upstream: a, upstreams: [b]}\n",
         "provisioners.ecc.upstreams: give provisioners.ecc.upstream or provisioners.ecc.upstreams, not both"),
    ],
)
def test_list_mistakes_are_one_line_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "acme-ra.yaml"
    config.write_text(UPSTREAMS + text)
    with pytest.raises(UpstreamConfigError) as raised:
        load_catalog(settings(tmp_path, config_file=config))
    line = str(raised.value)
    assert "\n" not in line
    assert line.startswith(f"acme-ra: invalid configuration: ACME_RA_CONFIG_FILE ({config}): ")
    assert line.endswith(message), line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gauge(upstream: str) -> float | None:
    return REGISTRY.get_sample_value("acme_ra_upstream_breaker_state", {"upstream": upstream})


def test_breaker_opens_after_consecutive_failures_half_opens_for_one_probe_and_closes() -> None:
    clock = Clock()
    breaker = Breaker("breaker-unit", clock=clock)
    assert state_of(breaker) is State.closed and gauge("breaker-unit") == 0
    for _ in range(FAILURES_TO_OPEN - 1):
        breaker.failure("connection refused")
    breaker.success()  # a success in between: the count starts again
    for _ in range(FAILURES_TO_OPEN - 1):
        breaker.failure("connection refused")
        assert breaker.allow() and state_of(breaker) is State.closed
    breaker.failure("connection refused")
    assert state_of(breaker) is State.open and not breaker.allow() and gauge("breaker-unit") == 2
    described = breaker.describe()
    assert described["state"] == "open" and described["last_error"] == "connection refused"
    assert described["retry_in_seconds"] == COOL_DOWN_SECONDS
    clock.now += COOL_DOWN_SECONDS
    assert state_of(breaker) is State.half_open
    assert breaker.allow() and gauge("breaker-unit") == 1  # the probe
    assert not breaker.allow()  # only one while its outcome is unknown
    breaker.release()  # the probe's order was refused: no verdict, the next request probes
    assert state_of(breaker) is State.half_open and breaker.allow() and not breaker.allow()
    breaker.failure("still refused")  # the probe failed: a new cool-down
    assert state_of(breaker) is State.open and not breaker.allow()
    clock.now += COOL_DOWN_SECONDS
    assert breaker.allow()
    breaker.success()
    assert state_of(breaker) is State.closed and breaker.allow() and gauge("breaker-unit") == 0
    assert breaker.describe() == {"state": "closed", "consecutive_failures": 0}
