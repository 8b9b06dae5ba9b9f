"""A topology that offers dns-account-01 and dns-persist-01 (issue 21), for the tests of both
with the tests' own client (tests/integration) and with acme.sh (tests/interop)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import database
from tests.support.dns_server import TestDnsServer
from tests.support.lab import Lab, running_lab

# The issuer domain name the topology accepts in dns-persist-01 records (given to it in upper
# case with a final dot: it advertises the draft's form).
ISSUER = "ra.example.net"
CAA_IDENTITY = "lab-ca.example"
TYPES = "http-01,dns-01,tls-alpn-01,dns-account-01,dns-persist-01"


@contextmanager
def persist_lab(test_dns: TestDnsServer, workdir: Path) -> Iterator[Lab]:
    with database.fresh_database(workdir / "db") as url, running_lab(
        workdir / "var", url, test_dns.resolver_setting, test_dns.txt_dir,
        {"ACME_RA_CHALLENGE_TYPES": TYPES, "ACME_RA_DNS_PERSIST_ISSUER_DOMAINS": f"{ISSUER.upper()}.",
         "ACME_RA_CAA_IDENTITIES": CAA_IDENTITY},
    ) as lab:
        yield lab
