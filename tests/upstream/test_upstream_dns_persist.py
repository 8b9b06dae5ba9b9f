"""Upstream dns-persist-01 (issue 21): an acme-ra whose upstream is another acme-ra (the lab CA
behind it, dns-persist-01 offered), with ``ACME_RA_UPSTREAM_AUTHZ_STRATEGY=dns-persist-01``.
``acme-ra upstream persist-record NAME`` prints the standing record for the lower acme-ra's
upstream account (registering it); the test publishes it once on the test DNS server, as the
operator would; then the lower acme-ra's clients get certificates that the upper one validated
by that record alone: one name, and with ``--wildcard`` a zone's wildcard and a name below it.
Without a record the order fails, naming the command.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from acme_ra_tools.dev import Topology
from tests.conformance.client import TestAcmeClient, b64, make_csr
from tests.support import database
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, Lab, LabPorts, lab_environment, started_trusting
from tests.support.persist_lab import ISSUER
from tests.support.persist_lab import persist_lab as running_persist_lab

from .pebble import make_tls_material

pytestmark = pytest.mark.integration

SECRET = "dns-persist-upstream-tests-secret-0123"
# A validation, an upstream issuance or a CLI run on a busy machine (seconds).
DEADLINE_SECONDS = 120


@dataclass
class TwoTiers:
    upper: Lab  # the upstream: an acme-ra with the lab CA, offering dns-persist-01
    lower: Lab  # the acme-ra under test, its upstream the upper one
    lower_env: dict[str, str]
    trust: Path  # the root of the lower frontend's TLS certificate


@pytest.fixture(scope="module")
def tiers(test_dns: TestDnsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoTiers]:
    workdir = tmp_path_factory.mktemp("persist-upstream")
    with running_persist_lab(test_dns, workdir / "upper") as upper:
        trust, cert, key = make_tls_material(workdir / "lower-tls")
        ports = LabPorts.allocate()
        with database.fresh_database(workdir / "lower-db") as url:
            env = lab_environment(workdir / "lower-var", url, ports, dns_resolvers=test_dns.resolver_setting)
            env.update({
                "ACME_RA_UPSTREAM": "acme",
                "ACME_RA_UPSTREAM_DIRECTORY_URL": upper.directory_url,
                "ACME_RA_UPSTREAM_CA_BUNDLE": str(upper.ca_bundle),
                "ACME_RA_UPSTREAM_AUTHZ_STRATEGY": "dns-persist-01",
                "ACME_RA_UPSTREAM_VALIDATION_TIMEOUT_SECONDS": "60",
                "ACME_RA_SECRET_KEY": SECRET,
                "ACME_RA_TLS_CERT_FILE": str(cert),
                "ACME_RA_TLS_KEY_FILE": str(key),
            })
            with started_trusting(Topology(env, nats_port=ports.nats), trust, "the lower topology") as topology:
                yield TwoTiers(upper, Lab(topology, ports, test_dns.txt_dir), env, trust)


@pytest.fixture
async def client(tiers: TwoTiers) -> AsyncIterator[TestAcmeClient]:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(tiers.trust)), timeout=30) as http:
        acme = TestAcmeClient(http, tiers.lower.directory_url)
        await acme.load_directory()
        assert (await acme.register()).status == 201
        yield acme


def persist_record(tiers: TwoTiers, *args: str) -> dict[str, str]:
    """What ``acme-ra upstream persist-record ARGS --json`` prints, run with the lower's settings."""
    done = subprocess.run([sys.executable, "-m", "acme_ra_tools.cli", "upstream", "persist-record", *args, "--json"],
                          env=tiers.lower_env, capture_output=True, text=True, timeout=DEADLINE_SECONDS, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    printed: dict[str, str] = json.loads(done.stdout)
    return printed


@contextmanager
def txt(lab: Lab, owner: str, value: str) -> Iterator[None]:
    folder = lab.txt_dir / owner.rstrip(".").lower()
    folder.mkdir(parents=True)
    (folder / "value").write_text(value)
    try:
        yield
    finally:  # the suite's DNS server is shared
        shutil.rmtree(folder)


async def order_through_dns01(lab: Lab, acme: TestAcmeClient, names: list[str]) -> dict[str, Any]:
    """The client proves ``names`` to the lower acme-ra by dns-01, finalizes; the order once settled."""
    reply = await acme.post(acme.directory["newOrder"], {"identifiers": [{"type": "dns", "value": n} for n in names]})
    assert reply.status == 201, reply.text
    order_url = reply.location or ""
    for authz_url in reply.body["authorizations"]:
        authz = await acme.post(authz_url)
        challenge = next(c for c in authz.body["challenges"] if c["type"] == "dns-01")
        value = b64(hashlib.sha256(acme.key_authorization(challenge["token"]).encode()).digest())
        with txt(lab, f"_acme-challenge.{authz.body['identifier']['value']}", value):
            assert (await acme.post(challenge["url"], {})).status == 200
            deadline = time.monotonic() + DEADLINE_SECONDS
            while (await acme.post(authz_url)).body["status"] == "pending" and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
    der, _ = make_csr(names)
    ready = await acme.post(order_url)
    assert ready.body["status"] == "ready", ready.text
    assert (await acme.post(ready.body["finalize"], {"csr": b64(der)})).status == 200
    deadline = time.monotonic() + DEADLINE_SECONDS
    while (order := await acme.post(order_url)).body["status"] == "processing" and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return dict(order.body)


async def issued_names(acme: TestAcmeClient, order: dict[str, Any]) -> list[str]:
    assert order["status"] == "valid", order
    leaf = x509.load_pem_x509_certificates((await acme.post(order["certificate"])).text.encode())[0]
    return sorted(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                  .get_values_for_type(x509.DNSName))


async def test_one_standing_record_per_name(tiers: TwoTiers, client: TestAcmeClient) -> None:
    name = f"up-{uuid.uuid4().hex[:8]}.{TEST_ZONE}"
    record = persist_record(tiers, name)
    assert record["owner"] == f"_validation-persist.{name}."
    assert record["value"] == f"{ISSUER}; accounturi={record['account']}"
    assert record["account"].startswith(tiers.upper.directory_url.removesuffix("/directory") + "/account/")
    with txt(tiers.upper, record["owner"], record["value"]):
        order = await order_through_dns01(tiers.lower, client, [name])
    assert await issued_names(client, order) == [name], tiers.lower.logs()


async def test_one_wildcard_record_per_zone(tiers: TwoTiers, client: TestAcmeClient) -> None:
    zone = f"upz-{uuid.uuid4().hex[:8]}.{TEST_ZONE}"
    record = persist_record(tiers, zone, "--wildcard", "--days", "30")
    assert "; policy=wildcard; persistUntil=" in record["value"], record
    names = sorted([f"*.{zone}", f"www.{zone}"])
    with txt(tiers.upper, record["owner"], record["value"]):
        order = await order_through_dns01(tiers.lower, client, names)
    assert await issued_names(client, order) == names, tiers.lower.logs()


async def test_without_the_record_the_order_fails_naming_the_command(tiers: TwoTiers,
                                                                      client: TestAcmeClient) -> None:
    name = f"upno-{uuid.uuid4().hex[:8]}.{TEST_ZONE}"
    order = await order_through_dns01(tiers.lower, client, [name])
    assert order["status"] == "invalid", order
    assert f"acme-ra upstream persist-record {name}" in order["error"]["detail"], order
