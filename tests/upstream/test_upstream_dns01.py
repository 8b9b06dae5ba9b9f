"""Upstream dns-01 against a Pebble that validates for real, resolving through a real BIND9:
the signer publishes the TXT records by RFC 2136 with TSIG (following a CNAME into a delegated
validation zone), waits for the zone's servers, answers, and removes them; ``prevalidated`` in
front of that Pebble fails naming ``authz_strategy``; a wrong TSIG secret fails once, clearly."""

from __future__ import annotations

import base64
import logging
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import SecretStr

from acme_ra import bus
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra_signer.upstream.base import UpstreamUnavailable
from acme_ra_signer.worker import IssueWorker
from acme_ra_tools.supervisor import free_port
from tests.support.bind import Bind, Zone
from tests.support.tcp_proxy import TcpProxy

from .conftest import (
    FakeMsg,
    certificate_count,
    certificate_of,
    for_pebble,
    make_acme_driver,
    new_order,
    order_row,
    run_job,
    upstream_order_row,
)
from .pebble import Pebble, require_pebble
from .test_upstream_signer_killed import LINK_DELAY_SECONDS, KilledMidIssuance, signer_env

# The hosts live in example.test (the key may write it) and hosts.test (it may not: its
# _acme-challenge names are CNAMEs into validation.test, the one zone delegated to acme-ra).
ZONES = [
    Zone("example.test"),
    Zone("hosts.test", updatable=False, records=["_acme-challenge.www IN CNAME www.validation.test."]),
    Zone("validation.test"),
]


@pytest.fixture
def pebble(validating_pebble: Pebble) -> Pebble:
    """Here Pebble validates for real, resolving through ``bind`` (this module's ZONES)."""
    return validating_pebble


def dns01_settings(settings: Settings, pebble: Pebble, bind: Bind, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "upstream_authz_strategy": "dns-01",
        "upstream_dns_rfc2136_server": bind.address,
        "upstream_dns_tsig_key_name": bind.key_name,
        "upstream_dns_tsig_secret_file": bind.secret_file,
        "upstream_dns_nameservers": bind.address,
        "upstream_dns_propagation_timeout_seconds": 20.0,
    }
    values.update(overrides)
    return for_pebble(settings, pebble, **values)


def san(certificate_pem: str) -> set[str]:
    leaf = x509.load_pem_x509_certificate(certificate_pem.encode())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.DNSName))


@pytest.mark.parametrize(
    "names",
    [
        ["one.example.test"],
        ["wild.example.test", "*.wild.example.test"],
        ["www.hosts.test"],
    ],
    ids=["one-name", "name-and-wildcard", "cname-into-validation-zone"],
)
async def test_dns01_issues_and_leaves_no_record(
    pebble: Pebble, bind: Bind, settings: Settings, db: Database, names: list[str]
) -> None:
    driver = make_acme_driver(dns01_settings(settings, pebble, bind), db)
    try:
        order_id = await new_order(db, names)
        msg = await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    order = await order_row(db, order_id)
    assert order.status == "valid", (order.error, pebble.log_path.read_text()[-2000:])
    assert msg.acks == 1
    certificate = await certificate_of(db, order_id)
    assert san(certificate.chain_pem) == set(names)
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.orders_created == 1 and record.dns_records is None
    log = bind.log_path.read_text()
    published = [line for line in log.splitlines() if "adding an RR at '" in line and " TXT " in line]
    # Two values at one name for a name and its wildcard; one per name otherwise.
    assert len(published) == len(names), published
    if names == ["www.hosts.test"]:
        assert all("www.validation.test" in line for line in published)
    assert bind.all_txt() == {}, "a TXT record was left in the zone"


async def test_prevalidated_in_front_of_a_validating_upstream_names_authz_strategy(
    pebble: Pebble, settings: Settings, db: Database
) -> None:
    driver = make_acme_driver(for_pebble(settings, pebble, upstream_authz_strategy="prevalidated"), db)
    try:
        order_id = await new_order(db, ["not-prevalidated.example.test"])
        msg = await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    assert msg.acks == 1
    order = await order_row(db, order_id)
    assert order.status == "invalid"
    assert order.error is not None and order.error["type"] == "unauthorized"
    detail = order.error["detail"]
    assert detail.startswith('upstream "default": did not validate not-prevalidated.example.test: '), detail
    assert 'Get "http://not-prevalidated.example.test:' in detail  # Pebble's own text (its http-01 fetch)
    assert "ACME_RA_UPSTREAM_AUTHZ_STRATEGY=prevalidated" in detail and "dns-01" in detail
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.state == "invalid" and record.finalized_at is None
    assert pebble.issued_count() == 0


async def test_a_wrong_tsig_secret_fails_the_order_once_with_one_log_line(
    pebble: Pebble, bind: Bind, settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    configured = dns01_settings(
        settings, pebble, bind, upstream_dns_tsig_secret_file=None, upstream_dns_tsig_secret=SecretStr(wrong)
    )
    driver = make_acme_driver(configured, db)
    caplog.set_level(logging.INFO)
    try:
        order_id = await new_order(db, ["tsig.example.test"])
        msg = await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    assert msg.acks == 1  # settled: not handed back for a retry
    order = await order_row(db, order_id)
    assert order.status == "invalid" and order.error is not None
    detail = order.error["detail"]
    assert detail.startswith('upstream "default": '), detail
    assert "in zone example.test.: the DNS server refused the update" in detail, detail
    assert bind.address not in detail and "acme-ra." not in detail  # no DNS topology for clients
    assert wrong not in caplog.text
    errors = [r for r in caplog.records if r.name == "acme_ra_signer.upstream.dns01" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage()
    line = errors[0].getMessage()
    assert f"at {bind.address} with TSIG key acme-ra refused" in line and "ACME_RA_UPSTREAM_DNS_TSIG_*" in line, line
    assert bind.all_txt() == {}
    assert pebble.issued_count() == 0


def nsupdate_hook(directory: Path, bind: Bind) -> Path:
    """A DNS provider script as an operator would write one: ``HOOK add|remove FQDN VALUE`` by
    BIND's nsupdate with the TSIG key file."""
    hook = directory / "dns-hook"
    hook.write_text(
        "#!/usr/bin/env bash\n"
        "set -euo pipefail\n"
        'action=$1 fqdn=$2 value=$3\n'
        'case $action in\n'
        '  add) change="update add $fqdn. 60 TXT \\"$value\\"" ;;\n'
        '  remove) change="update delete $fqdn. TXT \\"$value\\"" ;;\n'
        '  *) echo "unknown action $action" >&2; exit 2 ;;\n'
        "esac\n"
        f'printf "server 127.0.0.1 {bind.port}\\n%s\\nsend\\n" "$change" | nsupdate -k {bind.key_file}\n'
    )
    hook.chmod(0o755)
    return hook


async def test_dns01_by_a_hook_issues_and_leaves_no_record(
    pebble: Pebble, bind: Bind, settings: Settings, db: Database, tmp_path: Path
) -> None:
    hook = nsupdate_hook(tmp_path, bind)
    configured = dns01_settings(settings, pebble, bind, upstream_dns_rfc2136_server="", upstream_dns_hook=hook)
    driver = make_acme_driver(configured, db)
    names = ["hook.example.test", "*.hook.example.test", "www.hosts.test"]
    try:
        order_id = await new_order(db, names)
        await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    order = await order_row(db, order_id)
    assert order.status == "valid", order.error
    assert san((await certificate_of(db, order_id)).chain_pem) == set(names)
    assert bind.all_txt() == {}


async def test_a_failing_hook_fails_the_order_and_logs_its_last_line(
    pebble: Pebble, bind: Bind, settings: Settings, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = tmp_path / "broken-hook"
    hook.write_text("#!/bin/sh\necho 'provider API: 403 token expired' >&2\nexit 3\n")
    hook.chmod(0o755)
    configured = dns01_settings(settings, pebble, bind, upstream_dns_rfc2136_server="", upstream_dns_hook=hook)
    driver = make_acme_driver(configured, db)
    try:
        order_id = await new_order(db, ["broken.example.test"])
        msg = await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    assert msg.acks == 1
    order = await order_row(db, order_id)
    assert order.status == "invalid" and order.error is not None
    assert order.error["detail"].startswith('upstream "default": ')
    assert "the hook broken-hook exited 3" in order.error["detail"]
    assert "token expired" not in order.error["detail"]  # a provider's output stays in the log
    assert "exited 3: provider API: 403 token expired" in caplog.text
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.dns_records is None


async def test_signer_killed_mid_validation_completes_once_and_leaves_no_record(
    tmp_path: Path, pebble: Pebble, bind: Bind, db: Database, db_url: str, nats_url: str
) -> None:
    """SIGKILL of the signer process once its TXT record is in BIND (the upstream challenge is
    being answered over a slow link); a new signer finishes: one upstream order, one certificate,
    no record left."""
    link = TcpProxy(pebble.port, delay=LINK_DELAY_SECONDS)
    slow_url = f"https://127.0.0.1:{link.port}/dir"
    env = signer_env(tmp_path, pebble, slow_url, nats_url, db_url)
    env.update(
        ACME_RA_UPSTREAM_AUTHZ_STRATEGY="dns-01",
        ACME_RA_UPSTREAM_DNS_RFC2136_SERVER=bind.address,
        ACME_RA_UPSTREAM_DNS_TSIG_KEY_NAME=bind.key_name,
        ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE=str(bind.secret_file),
        ACME_RA_UPSTREAM_DNS_NAMESERVERS=bind.address,
    )
    try:
        async with KilledMidIssuance(tmp_path, env, link, db, nats_url) as run:
            order_id = await run.issue(["killed.example.test", "*.killed.example.test"])

            async def published() -> bool:
                return len(bind.txt("_acme-challenge.killed.example.test")) == 2

            await run.kill_when(published)
            record = await upstream_order_row(db, order_id)
            assert record is not None and record.state == "pending" and record.dns_records, record
            await run.resume()
            order = await order_row(db, order_id)
            assert order.status == "valid", (order.error, (tmp_path / "signer-2.log").read_text()[-3000:])
            record = await upstream_order_row(db, order_id)
            assert record is not None and record.orders_created == 1 and record.dns_records is None
            assert await certificate_count(db, order_id) == 1
            assert pebble.issued_count() == 1
            assert bind.all_txt() == {}
    finally:
        link.stop()


async def test_a_server_that_never_answers_the_record_fails_naming_the_propagation_timeout(
    pebble: Pebble, bind: Bind, settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    silent = free_port()  # nothing listens: this "authoritative server" never has the record
    configured = dns01_settings(
        settings,
        pebble,
        bind,
        upstream_dns_nameservers=f"{bind.address},127.0.0.1:{silent}",
        upstream_dns_propagation_timeout_seconds=1.0,
    )
    driver = make_acme_driver(configured, db)
    try:
        order_id = await new_order(db, ["slow-dns.example.test"])
        msg = await run_job(IssueWorker(db, driver), order_id)
    finally:
        await driver.close()
    assert msg.acks == 1
    order = await order_row(db, order_id)
    assert order.status == "invalid" and order.error is not None
    detail = order.error["detail"]
    assert detail.startswith('upstream "default": '), detail
    assert "ACME_RA_UPSTREAM_DNS_PROPAGATION_TIMEOUT_SECONDS" in detail, detail
    assert "at _acme-challenge.slow-dns.example.test. was not answered" in detail, detail
    assert str(silent) not in detail  # the servers are in the signer's log, not the client's problem
    assert f"_acme-challenge.slow-dns.example.test. at 127.0.0.1:{silent}" in caplog.text
    assert bind.all_txt() == {}
    assert pebble.issued_count() == 0


@pytest.fixture
def deaf_resolver() -> Iterator[str]:
    """A DNS "server" that takes every question and never answers (a UDP socket nobody reads)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_an_upstream_that_does_not_validate_in_time_fails_naming_the_validation_timeout(
    tmp_path: Path, bind: Bind, deaf_resolver: str, settings: Settings, db: Database
) -> None:
    """The record is in BIND, but this Pebble asks a resolver that never answers: its
    authorization stays pending past ACME_RA_UPSTREAM_VALIDATION_TIMEOUT_SECONDS. The order
    fails naming the setting, once: one upstream order, the record removed, no retry."""
    require_pebble()
    deaf = Pebble(tmp_path / "deaf-pebble", dns_server=deaf_resolver)
    try:
        configured = dns01_settings(settings, deaf, bind, upstream_validation_timeout_seconds=3.0)
        driver = make_acme_driver(configured, db)
        try:
            order_id = await new_order(db, ["late.example.test"])
            msg = await run_job(IssueWorker(db, driver), order_id)
        finally:
            await driver.close()
        issued = deaf.issued_count()
    finally:
        deaf.stop()
    assert msg.acks == 1  # settled, not handed back for a retry
    order = await order_row(db, order_id)
    assert order.status == "invalid" and order.error is not None
    assert order.error == {
        "type": "unauthorized",
        "detail": 'upstream "default": did not validate late.example.test within 3s (the authorization is still '
        "pending; ACME_RA_UPSTREAM_VALIDATION_TIMEOUT_SECONDS)",
    }
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.orders_created == 1 and record.dns_records is None
    assert record.state == "invalid" and record.finalized_at is None
    published = [line for line in bind.log_path.read_text().splitlines() if "adding an RR at '" in line]
    assert len(published) == 1, published  # it was published, then removed
    assert bind.all_txt() == {}
    assert issued == 0


async def test_an_unreachable_upstream_is_retried_and_its_failure_kept_for_the_order(
    settings: Settings, db: Database
) -> None:
    """A network error is transient (the job is handed back), and the order's upstream record
    keeps it, said by the upstream's name: the problem the order ends with if it is given up."""
    closed = free_port()
    configured = settings.model_copy(update={
        "upstream": "acme",
        "upstream_directory_url": f"https://127.0.0.1:{closed}/dir",
    })
    driver = make_acme_driver(configured, db)
    msg = FakeMsg()
    try:
        order_id = await new_order(db, ["unreachable.example.test"])
        with pytest.raises(UpstreamUnavailable):  # bus.consume naks it: delivered again later
            await IssueWorker(db, driver).handle(bus.IssueJob(order_id=order_id), msg)
    finally:
        await driver.close()
    assert msg.acks == 0
    assert (await order_row(db, order_id)).status == "processing"
    record = await upstream_order_row(db, order_id)
    assert record is not None and record.error is not None, record
    assert record.error["type"] == "serverInternal"
    assert record.error["detail"].startswith('upstream "default": '), record.error
    assert "unreachable" in record.error["detail"] and "ConnectError" in record.error["detail"], record.error
