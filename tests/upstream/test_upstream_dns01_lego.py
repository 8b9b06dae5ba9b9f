"""lego (Debian's package) gets certificates from acme-ra whose upstream, a Pebble validating for
real, is answered by upstream dns-01 through RFC 2136 to BIND9: a name and its wildcard in one
order (two values at one name), and a name whose ``_acme-challenge`` is a CNAME into the
validation zone, the only zone acme-ra's TSIG key may write. No TXT record is left in BIND.

lego proves its names to acme-ra by dns-01 (its ``exec`` provider writing to the suite's test DNS
server); acme-ra proves them to Pebble by dns-01 through BIND. certbot runs the same layout in
test_upstream_dns01_certbot.py (one name too).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop import clients
from tests.interop.test_lego import Lego
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE

from .test_upstream_dns01_certbot import HOSTS, Dns01Lab, bind_and_pebble, dns01_env, topology_in_front_of

__all__ = ["bind_and_pebble"]  # the module's BIND and Pebble (a fixture)


@pytest.fixture(scope="module")
def dns01_lab(test_dns: TestDnsServer, bind_and_pebble: tuple) -> Iterator[Dns01Lab]:  # type: ignore[type-arg]
    bind, pebble, workdir = bind_and_pebble
    with topology_in_front_of(pebble, workdir / "dns01-lego", test_dns, dns01_env(bind)) as lab:
        yield Dns01Lab(lab, pebble, bind, workdir / "dns01-lego" / "frontend-tls" / "ca.pem")


@pytest.mark.parametrize(
    "names",
    [[f"lego-wild.{TEST_ZONE}", f"*.lego-wild.{TEST_ZONE}"], [f"www.{HOSTS}"]],
    ids=["name-and-wildcard", "cname-into-validation-zone"],
)
def test_lego_gets_a_certificate_that_acme_ra_proved_to_pebble_by_dns01(
    dns01_lab: Dns01Lab, tmp_path: Path, names: list[str]
) -> None:
    issued_before = dns01_lab.pebble.issued_count()
    published_before = dns01_lab.bind.log_path.read_text().count("adding an RR at '")
    lego = Lego(dns01_lab.lab, dns01_lab.trust, tmp_path / "lego")
    lego(names, lego.dns01(), "run")  # asserts lego's exit status, with the services' logs
    chain = lego.chain(names[0])
    assert clients.san_names(chain[0]) == set(names)
    # Issued by Pebble (its intermediate), not by a lab CA.
    assert chain[0].issuer == dns01_lab.pebble.intermediate().subject
    assert dns01_lab.pebble.issued_count() == issued_before + 1
    log = dns01_lab.bind.log_path.read_text()
    published = [line for line in log.splitlines()[-400:] if "adding an RR at '" in line and " TXT " in line]
    assert log.count("adding an RR at '") - published_before == len(names), published
    if names == [f"www.{HOSTS}"]:
        assert "adding an RR at 'www.validation.test' TXT" in published[-1], published
    assert dns01_lab.bind.all_txt() == {}, "a TXT record was left in the zone"
