"""Fixtures of the interop tests: a web server for clients that write http-01 token files, and a
second topology whose signer uses a real Pebble as its upstream CA.

Most tests use the suite's ``lab`` (tests/conftest.py: the lab CA upstream, the test DNS server).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from acme_ra_tools.dev import Topology
from acme_ra_tools.supervisor import LaunchError
from tests.support import database
from tests.support.dns_server import TestDnsServer
from tests.support.lab import Lab, LabPorts, lab_environment
from tests.upstream.pebble import Pebble, make_tls_material

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
    """The three services with ``ACME_RA_UPSTREAM=acme`` pointing at Pebble (EAB required).

    The frontend serves a TLS pair of the test's own (``ACME_RA_TLS_CERT_FILE``): with no pair,
    ``ca-bundle.pem`` holds only the upstream's intermediate, which OpenSSL-based clients and the
    launcher's readiness check cannot use as a trust anchor (see docs/conformance.md, "Interop").
    """
    require("pebble")
    workdir = tmp_path_factory.mktemp("pebble-lab")
    pebble = Pebble(workdir / "pebble")
    try:
        trust, cert, key = make_tls_material(workdir / "frontend-tls")
        ports = LabPorts.allocate()
        with database.fresh_database(workdir / "db") as database_url:
            env = lab_environment(workdir / "var", database_url, ports, dns_resolvers=test_dns.resolver_setting)
            env.update({
                "ACME_RA_UPSTREAM": "acme",
                "ACME_RA_UPSTREAM_DIRECTORY_URL": pebble.directory_url,
                "ACME_RA_UPSTREAM_EAB_KID": pebble.eab_kid,
                "ACME_RA_UPSTREAM_EAB_HMAC_KEY": pebble.eab_hmac_key,
                "ACME_RA_UPSTREAM_CA_BUNDLE": str(pebble.ca_bundle),
                "ACME_RA_SECRET_KEY": PEBBLE_LAB_SECRET,
                "ACME_RA_TLS_CERT_FILE": str(cert),
                "ACME_RA_TLS_KEY_FILE": str(key),
            })
            topology = Topology(env, nats_port=ports.nats)
            # The launcher checks a configured TLS pair against the default roots: ours, here.
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("SSL_CERT_FILE", str(trust))
                patch.delenv("SSL_CERT_DIR", raising=False)
                try:
                    topology.start()
                except LaunchError as error:
                    pytest.fail(f"the Pebble topology did not start: {error}", pytrace=False)
            try:
                yield PebbleLab(Lab(topology, ports, test_dns.txt_dir), pebble, trust)
            finally:
                topology.stop()
    finally:
        pebble.stop()
