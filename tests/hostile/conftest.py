"""tests/hostile: the real processes (as ``make dev`` starts them) driven as an attacker would.

Every test asserts the exact status and problem type, that the answer came quickly, and that the
service is still up afterwards (``assert_still_up``). Tests that may take a process down use a lab
of their own (``own_lab``); the others share the suite's ``lab``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Self

import httpx
import pytest

from tests.support.dns_server import TestDnsServer
from tests.support.lab import Lab, running_lab

# An answer to hostile input must come at least this fast (seconds).
QUICK_ANSWER_SECONDS = 5.0


def assert_still_up(lab: Lab) -> None:
    """The frontend answers its directory and every service its health check."""
    with httpx.Client(verify=ssl.create_default_context(cafile=str(lab.ca_bundle)), timeout=10) as http:
        assert http.get(lab.directory_url).status_code == 200, lab.logs()
        for port in (lab.ports.validator, lab.ports.signer):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200, lab.logs()


class Timer:
    """``with Timer() as t: ...`` then ``t.assert_quick()``."""

    def __enter__(self) -> Self:
        self.started = time.monotonic()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.started

    def assert_quick(self, limit: float = QUICK_ANSWER_SECONDS) -> None:
        assert self.elapsed < limit, f"answered in {self.elapsed:.1f} s (limit {limit} s)"


@pytest.fixture
def own_lab(test_dns: TestDnsServer, fresh_database_url: str,
            tmp_path: Path) -> Callable[..., AbstractContextManager[Lab]]:
    """``with own_lab(ACME_RA_X="1") as lab:`` a topology of the test's own (once per test), on a
    fresh database of the lane's kind, for a test that may take a process down or needs other
    settings."""

    @contextmanager
    def start(**extra_env: str) -> Iterator[Lab]:
        with running_lab(tmp_path / "var", fresh_database_url, test_dns.resolver_setting, test_dns.txt_dir,
                         extra_env) as lab:
            yield lab

    return start
