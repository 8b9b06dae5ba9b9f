"""acme.sh 3.1.4 gets certificates by dns-persist-01 (issue 21): ``--make-dns-persist-value``
prints the record for its account, taking the issuer domain name from the directory's
``caaIdentities``; the test publishes what it printed on the test DNS server, as an operator
would once; ``--issue --dns-persist`` then gets the certificate (acme.sh publishes nothing
itself). With ``--dns-persist-wildcard`` the one record at the zone covers a wildcard order.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, Lab
from tests.support.persist_lab import ISSUER
from tests.support.persist_lab import persist_lab as running_persist_lab

from . import clients
from .test_acme_sh import acme_sh

pytestmark = pytest.mark.integration

# What --make-dns-persist-value prints for each issuer identity (with --no-color).
PRINTED_RECORD = re.compile(r'TXT persist domain:(\S+)\s*\n.*TXT persist value :"([^"\n]*)"')


@pytest.fixture(scope="module")
def persist_lab(test_dns: TestDnsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_persist_lab(test_dns, tmp_path_factory.mktemp("acme-sh-persist")) as lab:
        yield lab


class AcmeSh:
    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        self.lab = lab
        self.home = tmp_path / "acme.sh"
        self.home.mkdir()
        self.script = self.home / "acme.sh"  # acme.sh edits its own directory on some paths: a copy
        shutil.copy(acme_sh(), self.script)
        self.env = clients.client_environment(HOME=str(tmp_path), LE_WORKING_DIR=str(self.home))

    def run(self, *args: str) -> clients.Run:
        command = ["sh", str(self.script), "--home", str(self.home), "--config-home", str(self.home),
                   "--cert-home", str(self.home / "certs"), "--server", self.lab.directory_url,
                   "--ca-bundle", str(self.lab.ca_bundle), "--no-color", *args]
        run = clients.run(command, self.env, cwd=self.home)
        assert run.returncode == 0, f"{run.describe()}\n{self.lab.logs()}"
        return run

    def persist_record(self, name: str, *options: str) -> tuple[str, str]:
        """The record acme.sh tells the operator to publish for ``name``: (owner, value)."""
        run = self.run("--make-dns-persist-value", "-d", name, *options)
        printed = PRINTED_RECORD.findall(run.output)
        ours = [(owner, value) for owner, value in printed if value.startswith(ISSUER + ";")]
        assert ours, run.describe()
        return ours[0]

    def leaf(self, name: str) -> x509.Certificate:
        folder = next((self.home / "certs").glob(f"{name}*"))
        return clients.load_chain(folder / "fullchain.cer")[0]


def publish(lab: Lab, owner: str, value: str) -> Path:
    folder = lab.txt_dir / owner.lower()
    folder.mkdir(parents=True)
    (folder / "value").write_text(value)
    return folder


def dns_names(leaf: x509.Certificate) -> list[str]:
    return sorted(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                  .get_values_for_type(x509.DNSName))


def test_acme_sh_issues_with_a_standing_record(persist_lab: Lab, tmp_path: Path) -> None:
    acme = AcmeSh(persist_lab, tmp_path)
    acme.run("--register-account")
    name = f"sh-{uuid.uuid4().hex[:8]}.{TEST_ZONE}"
    owner, value = acme.persist_record(name)
    assert owner == f"_validation-persist.{name}" and "; accounturi=https://" in value, (owner, value)
    folder = publish(persist_lab, owner, value)
    try:
        acme.run("--issue", "--dns-persist", "-d", name)
    finally:  # the suite's DNS server is shared
        shutil.rmtree(folder)
    assert dns_names(acme.leaf(name)) == [name]


def test_acme_sh_wildcard_with_policy_wildcard(persist_lab: Lab, tmp_path: Path) -> None:
    acme = AcmeSh(persist_lab, tmp_path)
    acme.run("--register-account")
    zone = f"shw-{uuid.uuid4().hex[:8]}.{TEST_ZONE}"
    owner, value = acme.persist_record(zone, "--dns-persist-wildcard", "--dns-persist-days", "7")
    assert value.endswith("; policy=wildcard; persistUntil=" + value.rsplit("=", 1)[1]), value
    folder = publish(persist_lab, owner, value)
    try:
        acme.run("--issue", "--dns-persist", "-d", zone, "-d", f"*.{zone}")
    finally:
        shutil.rmtree(folder)
    assert dns_names(acme.leaf(zone)) == sorted([zone, f"*.{zone}"])
