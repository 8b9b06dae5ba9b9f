"""Fixtures of the interop tests: a web server for clients that write http-01 token files, and a
second topology whose signer uses a real Pebble as its upstream CA.

Most tests use the suite's ``lab`` (tests/conftest.py: the lab CA upstream, the test DNS server).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dns_server import TestDnsServer
from tests.support.lab import Lab, running_tls_lab
from tests.upstream.pebble import Pebble
from tests.upstream.pebble import upstream_env as pebble_upstream_env

from .clients import require
from .webroot import ChallengeWebServer

# Seals the upstream account key and EAB key at rest in the Pebble topology (tests only).
PEBBLE_LAB_SECRET = "interop-tests-sealing-secret-0123456789"


@pytest.fixture
def webroot(lab: Lab, tmp_path: Path) -> Iterator[ChallengeWebServer]:
    """Token files written to ``webroot.directory`` answer http-01 on the lab's validation port."""
    with ChallengeWebServer(tmp_path / "acme-challenge", lab.ports.http01) as server:
        yield server


@dataclass
class PebbleLab:
    lab: Lab
    pebble: Pebble
    trust: Path  # the root of the frontend's TLS certificate: what clients must trust

    @property
    def directory_url(self) -> str:
        return self.lab.directory_url


@pytest.fixture(scope="module")
def pebble_lab(test_dns: TestDnsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleLab]:
    """The three services with ``ACME_RA_UPSTREAM=acme`` pointing at Pebble (EAB required); the
    frontend serves a TLS pair of the test's own (tests/support/lab.py running_tls_lab)."""
    require("pebble")
    workdir = tmp_path_factory.mktemp("pebble-lab")
    pebble = Pebble(workdir / "pebble")
    try:
        with running_tls_lab(workdir, test_dns, pebble_upstream_env(pebble, PEBBLE_LAB_SECRET)) as (lab, trust):
            yield PebbleLab(lab, pebble, trust)
    finally:
        pebble.stop()
