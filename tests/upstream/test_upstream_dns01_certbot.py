"""The whole of acme-ra (frontend, validator, signer on NATS) in front of a Pebble that validates
for real through a real BIND9, with ``ACME_RA_UPSTREAM_AUTHZ_STRATEGY=dns-01``: certbot gets
certificates for one name, a name and its wildcard, and a name whose ``_acme-challenge`` is a
CNAME into the validation zone, the only zone acme-ra's TSIG key may write. No TXT record is left
in BIND afterwards. The settings are read from docs/upstream.md's recipe (dns01-env).

certbot proves its names to acme-ra by dns-01 through the suite's test DNS server (its hooks);
acme-ra proves them to Pebble by dns-01 through BIND.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.bind import Bind, Zone
from tests.support.certbot import certonly, dns_names
from tests.support.dns_server import TestDnsServer
from tests.support.doc_recipes import exports, recipe, substituted
from tests.support.lab import TEST_ZONE, Lab, running_tls_lab

from .pebble import Pebble, require_pebble
from .pebble import upstream_env as pebble_upstream_env

SECRET = "dns01-certbot-tests-sealing-secret-0123"
HOSTS = f"hosts.{TEST_ZONE}"
# acme-ra may write TEST_ZONE and validation.test; not HOSTS, whose _acme-challenge names are
# CNAMEs into validation.test (the delegation recipe of docs/upstream.md).
ZONES = [
    Zone(TEST_ZONE),
    Zone(HOSTS, updatable=False, records=["_acme-challenge.www IN CNAME www.validation.test."]),
    Zone("validation.test"),
]


@dataclass
class Dns01Lab:
    lab: Lab
    pebble: Pebble
    bind: Bind
    trust: Path


@contextmanager
def topology_in_front_of(
    pebble: Pebble, workdir: Path, test_dns: TestDnsServer, upstream_env: dict[str, str]
) -> Iterator[Lab]:
    """The three services with ``pebble`` as their upstream and ``upstream_env`` on top."""
    with running_tls_lab(workdir, test_dns, pebble_upstream_env(pebble, SECRET) | upstream_env) as (lab, _):
        yield lab


def dns01_env(bind: Bind) -> dict[str, str]:
    """docs/upstream.md's recipe dns01-env ("dns-01 by RFC 2136"), with this BIND's address."""
    text = recipe("upstream.md", "dns01-env")
    env = exports(substituted(text, {"192.0.2.53:53": bind.address, "/etc/acme-ra/tsig.secret": str(bind.secret_file)}))
    assert env["ACME_RA_UPSTREAM_DNS_TSIG_KEY_NAME"] == bind.key_name
    return env


@pytest.fixture(scope="module")
def bind_and_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bind, Pebble, Path]]:
    require_pebble()
    workdir = tmp_path_factory.mktemp("dns01-lab")
    bind = Bind(workdir / "bind", ZONES)
    try:
        pebble = Pebble(workdir / "pebble", dns_server=bind.resolver_address)
        try:
            yield bind, pebble, workdir
        finally:
            pebble.stop()
    finally:
        bind.stop()


@pytest.fixture(scope="module")
def dns01_lab(test_dns: TestDnsServer, bind_and_pebble: tuple[Bind, Pebble, Path]) -> Iterator[Dns01Lab]:
    bind, pebble, workdir = bind_and_pebble
    with topology_in_front_of(pebble, workdir / "dns01", test_dns, dns01_env(bind)) as lab:
        yield Dns01Lab(lab, pebble, bind, workdir / "dns01" / "frontend-tls" / "ca.pem")


@pytest.mark.parametrize(
    "names",
    [
        [f"one.{TEST_ZONE}"],
        [f"wild.{TEST_ZONE}", f"*.wild.{TEST_ZONE}"],
        [f"www.{HOSTS}"],
    ],
    ids=["one-name", "name-and-wildcard", "cname-into-validation-zone"],
)
def test_certbot_gets_a_certificate_that_acme_ra_proved_to_pebble_by_dns01(
    dns01_lab: Dns01Lab, tmp_path: Path, names: list[str]
) -> None:
    issued_before = dns01_lab.pebble.issued_count()
    run = certonly(dns01_lab.lab, names, "dns-01", tmp_path, trust=dns01_lab.trust)
    assert run.returncode == 0, run.describe() + "\n" + dns01_lab.lab.logs()[-6000:]
    assert dns_names(run.chain()[0]) == set(names)
    assert dns01_lab.pebble.issued_count() == issued_before + 1
    assert dns01_lab.bind.all_txt() == {}, "a TXT record was left in the zone"


def test_prevalidated_in_front_of_a_validating_upstream_tells_the_client_what_to_set(
    test_dns: TestDnsServer, bind_and_pebble: tuple[Bind, Pebble, Path], tmp_path: Path
) -> None:
    _, pebble, _ = bind_and_pebble
    issued_before = pebble.issued_count()
    prevalidated = {"ACME_RA_UPSTREAM_AUTHZ_STRATEGY": "prevalidated"}
    with topology_in_front_of(pebble, tmp_path / "lab", test_dns, prevalidated) as lab:
        run = certonly(lab, [f"prevalidated.{TEST_ZONE}"], "dns-01", tmp_path / "certbot",
                       trust=tmp_path / "lab" / "frontend-tls" / "ca.pem")
    assert run.returncode != 0, run.describe()
    assert f"did not validate prevalidated.{TEST_ZONE}" in run.output, run.describe()
    assert "ACME_RA_UPSTREAM_AUTHZ_STRATEGY=prevalidated" in run.output and "dns-01" in run.output, run.describe()
    assert pebble.issued_count() == issued_before
