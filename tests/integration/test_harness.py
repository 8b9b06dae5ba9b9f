"""The harness's own parts: the test DNS server with the certbot hooks, and the launcher's
helpers that do not need a running topology."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from acme_ra_tools.dev import Topology
from acme_ra_tools.supervisor import TAIL_LINES, Child, LaunchError, settings_from_env
from tests.support.certbot import AUTH_HOOK, CLEANUP_HOOK
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, LabPorts, lab_environment

pytestmark = pytest.mark.integration


def ask(server: TestDnsServer, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", port=server.port, timeout=2)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_names_in_the_zone_resolve_to_loopback(test_dns: TestDnsServer, tcp: bool) -> None:
    answer = ask(test_dns, f"anything.{TEST_ZONE}", "A", tcp)
    assert [rr.to_text() for rrset in answer.answer for rr in rrset] == ["127.0.0.1"]
    assert ask(test_dns, "elsewhere.example", "A", tcp).rcode() == dns.rcode.NXDOMAIN
    assert ask(test_dns, f"anything.{TEST_ZONE}", "AAAA", tcp).answer == []


def test_hooks_publish_and_remove_txt_records(test_dns: TestDnsServer) -> None:
    name = f"_acme-challenge.hooked.{TEST_ZONE}"
    env = {"PATH": "/usr/bin:/bin", "TEST_DNS_TXT_DIR": str(test_dns.txt_dir),
           "CERTBOT_DOMAIN": f"Hooked.{TEST_ZONE}"}
    for value in ("first-value", "second-value"):  # a wildcard and its base name: two records
        subprocess.run([AUTH_HOOK], env=env | {"CERTBOT_VALIDATION": value}, check=True)
    answer = ask(test_dns, name, "TXT")
    assert sorted(rr.to_text() for rrset in answer.answer for rr in rrset) == ['"first-value"', '"second-value"']
    for value in ("first-value", "second-value"):
        subprocess.run([CLEANUP_HOOK], env=env | {"CERTBOT_VALIDATION": value}, check=True)
    assert ask(test_dns, name, "TXT").answer == []


def test_settings_come_from_the_given_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_RA_LISTEN", "127.0.0.1:1")
    settings = settings_from_env({"ACME_RA_LISTEN": "127.0.0.1:2", "ACME_RA_STATE_DIR": "/srv/ra"})
    assert settings.listen == "127.0.0.1:2"
    assert settings.state_dir == Path("/srv/ra")


def test_printed_certbot_command_names_the_validation_port(tmp_path: Path) -> None:
    env = lab_environment(tmp_path / "my var", "sqlite+aiosqlite:///x.db", LabPorts.allocate())
    topology = Topology(env)
    command = topology.certbot_command()
    port = topology.settings.validation_http_port
    assert command.startswith(f"REQUESTS_CA_BUNDLE='{tmp_path}/my var/ca-bundle.pem' ")
    assert f"--http-01-port {port} " in command
    assert f"--server {topology.directory_url} " in command


def test_a_service_that_cannot_start_fails_start_up_and_stops_the_rest(
    fresh_database_url: str, tmp_path: Path
) -> None:
    ports = LabPorts.allocate()
    env = lab_environment(tmp_path / "var", fresh_database_url, ports)
    env["ACME_RA_LISTEN"] = "192.0.2.1:443"  # an address this machine does not have
    topology = Topology(env, nats_port=ports.nats)
    with pytest.raises(LaunchError, match="frontend exited with status"):
        topology.start()
    assert topology.services == {} and topology.nats is None


def test_printed_certbot_command_uses_sudo_for_a_privileged_port_when_not_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    topology = Topology({"ACME_RA_STATE_DIR": str(tmp_path), "ACME_RA_VALIDATION_HTTP_PORT": "80"})
    assert topology.certbot_command().startswith(f"sudo env REQUESTS_CA_BUNDLE={tmp_path}/ca-bundle.pem ")
    assert "ACME_RA_VALIDATION_HTTP_PORT=8080 make dev" in topology.summary()
    unprivileged = Topology({"ACME_RA_STATE_DIR": str(tmp_path), "ACME_RA_VALIDATION_HTTP_PORT": "8080"})
    assert unprivileged.certbot_command().startswith("REQUESTS_CA_BUNDLE=")


def test_a_child_without_echo_writes_its_log_itself_and_its_failure_shows_its_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    log.write_bytes(b"a line of the run before\n")
    script = "import sys\nfor i in range(50): print('line', i, flush=True)\nsys.exit(3)"
    child = Child("child", [sys.executable, "-c", script], os.environ, log, echo=None)
    try:
        child.process.wait(30)
        described = child.describe_failure()
    finally:
        child.wait_stopped(5)
    assert child.returncode == 3
    assert described.splitlines()[1:] == [f"    line {i}" for i in range(50 - TAIL_LINES, 50)]
    assert log.read_text().startswith("a line of the run before\nline 0\n")  # appended, not replaced
