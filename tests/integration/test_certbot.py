"""certbot gets certificates through the running services: http-01 and dns-01, wildcards."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import certbot
from tests.support.lab import TEST_ZONE, Lab

pytestmark = pytest.mark.integration


def assert_issued(run: certbot.CertbotRun, lab: Lab, names: set[str]) -> None:
    assert run.returncode == 0, f"{run.describe()}\n{lab.logs()}"
    assert "Successfully received certificate" in run.output, run.describe()
    chain = run.chain()
    assert certbot.dns_names(chain[0]) == names
    for name in names:
        certbot.verify_chain(chain, lab.ca_bundle, name.replace("*", "any", 1))


def test_http01_for_a_name_from_the_dns_server(lab: Lab, tmp_path: Path) -> None:
    name = f"web.{TEST_ZONE}"
    run = certbot.certonly(lab, [name], "http-01", tmp_path)
    assert_issued(run, lab, {name})


def test_http01_for_a_lab_name_under_localhost(lab: Lab, tmp_path: Path) -> None:
    run = certbot.certonly(lab, ["myhost.localhost"], "http-01", tmp_path)
    assert_issued(run, lab, {"myhost.localhost"})


def test_dns01_with_the_manual_hooks(lab: Lab, tmp_path: Path) -> None:
    names = [f"dns.{TEST_ZONE}", f"www.dns.{TEST_ZONE}"]
    run = certbot.certonly(lab, names, "dns-01", tmp_path)
    assert_issued(run, lab, set(names))
    assert not any(lab.txt_dir.iterdir()), "the cleanup hook left TXT records behind"


def test_dns01_wildcard_and_its_base_name(lab: Lab, tmp_path: Path) -> None:
    names = [f"wild.{TEST_ZONE}", f"*.wild.{TEST_ZONE}"]
    run = certbot.certonly(lab, names, "dns-01", tmp_path)
    assert_issued(run, lab, set(names))


def test_dns01_without_the_txt_record_fails_with_the_servers_problem(lab: Lab, tmp_path: Path) -> None:
    run = certbot.certonly(lab, [f"missing.{TEST_ZONE}"], "dns-01", tmp_path, auth_hook="true")
    assert run.returncode == 1, run.describe()
    assert "The Certificate Authority reported these problems" in run.output, run.describe()
    assert f"Identifier: missing.{TEST_ZONE}" in run.output, run.describe()
    assert "Type:   unauthorized" in run.output, run.describe()
    assert f"No TXT record found at _acme-challenge.missing.{TEST_ZONE}" in run.output, run.describe()
    assert not run.live.exists()
