"""Client networks: the rules (acme_ra.client_networks), their reload, the client address behind a
trusted proxy, and the frontend app's answers (in-process, the client address set by the transport).
tests/hostile/test_client_networks.py drives the real processes, directly and through HAProxy."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request

from acme_ra.client_networks import ClientNetworksError, load_client_networks
from acme_ra.config import Settings
from acme_ra.protocol.identifiers import parse_identifier
from acme_ra_frontend import client_networks as gate
from acme_ra_frontend.app import create_app
from acme_ra_frontend.ratelimits import client_address
from tests.conformance.client import TestAcmeClient
from tests.frontend.conftest import EXTERNAL_URL

RULES = """\
client_networks:
  10.1.0.0/16: [.physics.example.edu]
  10.0.0.0/8: ".example.edu, 10.0.0.0/8"
  192.0.2.0/24:
  2001:db8:1::/48:
    allow: [.v6.example.edu]
    deny: [secret.v6.example.edu]
    wildcards: false
"""


def rules_file(tmp_path: Path, text: str = RULES, name: str = "acme-ra.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(rules: object, address: str, kind: str, value: str) -> str | None:
    entry = rules.match(address)  # type: ignore[attr-defined]
    assert entry is not None, address
    return entry.refusal(parse_identifier({"type": kind, "value": value}))  # type: ignore[no-any-return]


# The rules ------------------------------------------------------------------------------------


def test_unset_means_every_address(tmp_path: Path) -> None:
    assert not load_client_networks(Settings()).restricted
    # A file without the section, or with an empty one, restricts nothing either.
    assert not load_client_networks(Settings(config_file=rules_file(tmp_path, "upstreams: {}\n"))).restricted
    assert not load_client_networks(Settings(config_file=rules_file(tmp_path, "client_networks: {}\n"))).restricted


def test_the_most_specific_network_decides(tmp_path: Path) -> None:
    rules = load_client_networks(Settings(config_file=rules_file(tmp_path)))
    assert rules.restricted
    assert str(rules.match("10.1.2.3").network) == "10.1.0.0/16"  # type: ignore[union-attr]
    assert str(rules.match("10.2.0.1").network) == "10.0.0.0/8"  # type: ignore[union-attr]
    assert rules.match("11.0.0.1") is None
    assert rules.match("not an address") is None
    # 10.1/16 may request physics names only, although 10/8 may request every example.edu name.
    assert refusal(rules, "10.1.2.3", "dns", "www.physics.example.edu") is None
    assert refusal(rules, "10.1.2.3", "dns", "*.physics.example.edu") is None
    assert refusal(rules, "10.1.2.3", "dns", "www.chem.example.edu") == (
        "not in the names clients in 10.1.0.0/16 may request")
    assert refusal(rules, "10.2.0.1", "dns", "www.chem.example.edu") is None
    assert refusal(rules, "10.2.0.1", "ip", "10.9.9.9") is None
    assert refusal(rules, "10.2.0.1", "ip", "192.0.2.1") is not None
    # An empty rule list: any identifier (the global policy still applies in newOrder).
    assert refusal(rules, "192.0.2.77", "dns", "anything.example.org") is None


def test_ipv6_and_ipv4_mapped_addresses(tmp_path: Path) -> None:
    rules = load_client_networks(Settings(config_file=rules_file(tmp_path)))
    assert str(rules.match("2001:db8:1:ffff::9").network) == "2001:db8:1::/48"  # type: ignore[union-attr]
    assert rules.match("2001:db8:2::9") is None
    assert rules.match("::ffff:10.1.0.1") is rules.match("10.1.0.1")  # a dual-stack socket's IPv4 client
    assert rules.match("fe80::1%eth0") is None
    assert refusal(rules, "2001:db8:1::1", "dns", "a.v6.example.edu") is None
    assert refusal(rules, "2001:db8:1::1", "dns", "secret.v6.example.edu") == (
        "denied by policy rule 'secret.v6.example.edu'")
    assert refusal(rules, "2001:db8:1::1", "dns", "*.v6.example.edu") == "wildcard names are not allowed"
    everyone6 = load_client_networks(Settings(policy_client_networks="::/0"))
    assert everyone6.match("2001:db8::1") is not None and everyone6.match("10.0.0.1") is None
    loopback = load_client_networks(Settings(policy_client_networks="127.0.0.1/32, ::1"))
    assert loopback.match("127.0.0.1") is not None and loopback.match("::1") is not None
    assert loopback.match("127.0.0.2") is None


def test_environment_toml_and_list_forms(tmp_path: Path) -> None:
    toml = rules_file(tmp_path, '[client_networks]\n"10.1.0.0/16" = [".physics.example.edu"]\n'
                                '"10.3.0.0/16" = {allow = [".c.example.edu"], wildcards = false}\n', "c.toml")
    rules = load_client_networks(Settings(config_file=toml, policy_client_networks="192.0.2.0/24,198.51.100.7"))
    assert [(e["network"], e["allow"], e["origin"]) for e in rules.to_data()] == [
        ("10.1.0.0/16", [".physics.example.edu"], "ACME_RA_CONFIG_FILE"),
        ("10.3.0.0/16", [".c.example.edu"], "ACME_RA_CONFIG_FILE"),
        ("192.0.2.0/24", [], "ACME_RA_POLICY_CLIENT_NETWORKS"),
        ("198.51.100.7/32", [], "ACME_RA_POLICY_CLIENT_NETWORKS"),
    ]
    plain = load_client_networks(Settings(config_file=rules_file(tmp_path, "client_networks: [10.0.0.0/8, '::1']\n")))
    assert plain.match("10.9.9.9") is not None and plain.match("::1") is not None
    # Host bits are dropped: 10.1.2.3/16 is 10.1.0.0/16.
    assert load_client_networks(Settings(policy_client_networks="10.1.2.3/16")).to_data()[0]["network"] == "10.1.0.0/16"


@pytest.mark.parametrize(("text", "message"), [
    ("client_networks:\n  10.1.0.0/33: []\n", "client_networks.10.1.0.0/33: '10.1.0.0/33' is not a CIDR"),
    ("client_networks:\n  10.1.0.0/16: [.ok.example, 10.0.0.0/99]\n",
     "client_networks.10.1.0.0/16: bad identifier rule"),
    ("client_networks:\n  10.1.0.0/16: [1, 2]\n", "client_networks.10.1.0.0/16: identifier rules are strings"),
    ("client_networks:\n  10.1.0.0/16: {allow: [.a.example], permit: [.b.example]}\n", "unknown key 'permit'"),
    ("client_networks:\n  10.1.0.0/16: {wildcards: maybe}\n", "client_networks.10.1.0.0/16.wildcards: expected true"),
    ("client_networks: 10.0.0.0/8\n", "client_networks: expected a mapping of CIDR"),
    ("client_networks:\n  10.1.0.0/16: []\n  10.1.9.9/16: []\n", "client_networks: 10.1.0.0/16 is listed twice"),
    ("client_networks: [\n", "not valid YAML"),
    ("- a list\n", "expected a mapping at the top level"),
])
def test_a_bad_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ClientNetworksError) as raised:
        load_client_networks(Settings(config_file=rules_file(tmp_path, text)))
    line = str(raised.value)
    assert line.startswith("acme-ra: invalid configuration: ACME_RA_CONFIG_FILE (") and "\n" not in line
    assert message in line


def test_a_network_in_both_sources_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClientNetworksError, match="client_networks: 10.1.0.0/16 is listed in "
                                                  "ACME_RA_POLICY_CLIENT_NETWORKS too"):
        load_client_networks(Settings(config_file=rules_file(tmp_path), policy_client_networks="10.1.0.0/16"))
    with pytest.raises(ClientNetworksError, match="cannot read it"):
        load_client_networks(Settings(config_file=tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="ACME_RA_POLICY_CLIENT_NETWORKS|policy_client_networks"):
        Settings(policy_client_networks="10.0.0.0/8,not-a-network")


# The reload -----------------------------------------------------------------------------------


def file_valid() -> float | None:
    return REGISTRY.get_sample_value("acme_ra_client_networks_file_valid")


def touch_later(path: Path, text: str) -> None:
    """Rewrite ``path`` with a later mtime (a filesystem's clock may not have moved on)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_reload_when_the_file_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = rules_file(tmp_path)
    watch = gate.ClientNetworkWatch(Settings(config_file=path))
    assert watch.rules.match("172.16.0.1") is None
    assert not watch.reload_if_changed()  # unchanged: not even read
    touch_later(path, RULES + "  172.16.0.0/12: []\n")
    assert watch.reload_if_changed()
    assert watch.rules.match("172.16.0.1") is not None
    assert REGISTRY.get_sample_value("acme_ra_client_networks") == 5

    # A bad file: the rules in force stay, one error line, once (not on every look).
    caplog.set_level(logging.INFO, "acme_ra.frontend.client_networks")
    touch_later(path, RULES + "  172.16.0.0/99: []\n")
    assert not watch.reload_if_changed() and not watch.reload_if_changed()
    assert watch.rules.match("172.16.0.1") is not None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage() == (
        f"client networks not reloaded, the previous rules stay in force: invalid configuration: "
        f"ACME_RA_CONFIG_FILE ({path}): client_networks.172.16.0.0/99: '172.16.0.0/99' is not a CIDR such as "
        "10.1.0.0/16")
    assert file_valid() == 0

    # The file removed: the same. Back, fixed: its rules apply.
    path.unlink()
    assert not watch.reload_if_changed() and watch.rules.match("172.16.0.1") is not None
    path.write_text("client_networks: [172.16.0.0/12]\n")
    assert watch.reload_if_changed()
    assert watch.rules.match("172.16.0.1") is not None and watch.rules.match("10.1.0.1") is None
    assert file_valid() == 1
    # Emptied: every address again.
    touch_later(path, "client_networks:\n")
    assert watch.reload_if_changed() and not watch.rules.restricted


def test_a_bad_file_at_start_up_raises(tmp_path: Path) -> None:
    with pytest.raises(ClientNetworksError):
        gate.ClientNetworkWatch(Settings(config_file=rules_file(tmp_path, "client_networks: {x: []}\n")))


# The client address ---------------------------------------------------------------------------


def request_from(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (peer, 4000)})


PROXIES = [__import__("ipaddress").ip_network(n) for n in ("192.0.2.10/32", "198.51.100.0/24")]


def test_client_address_behind_trusted_proxies() -> None:
    # An untrusted peer's X-Forwarded-For is ignored.
    assert client_address(request_from("203.0.113.9", "10.1.2.3"), PROXIES) == "203.0.113.9"
    # A trusted proxy: the hop it saw.
    assert client_address(request_from("192.0.2.10", "10.1.2.3"), PROXIES) == "10.1.2.3"
    # The client sent its own header and the proxy added another (HAProxy's option forwardfor):
    # the proxy's, the last, wins; the client's word is not taken.
    assert client_address(request_from("192.0.2.10", "10.1.2.3", "203.0.113.9"), PROXIES) == "203.0.113.9"
    assert client_address(request_from("192.0.2.10", "10.1.2.3, 203.0.113.9"), PROXIES) == "203.0.113.9"
    # Two trusted proxies in a row: the first untrusted hop from the right.
    assert client_address(request_from("192.0.2.10", "10.1.2.3, 203.0.113.9, 198.51.100.4"), PROXIES) == "203.0.113.9"
    # No header, or an empty one: the proxy itself.
    assert client_address(request_from("192.0.2.10"), PROXIES) == "192.0.2.10"
    assert client_address(request_from("192.0.2.10", " , "), PROXIES) == "192.0.2.10"
    assert client_address(request_from("::ffff:192.0.2.10", "2001:db8:1::5"), PROXIES) == "2001:db8:1::5"


# The frontend app -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def restricted_app(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[object]:
    path = rules_file(tmp_path_factory.mktemp("client-networks"))
    restricted = settings.model_copy(update={"config_file": path, "policy_client_networks": "198.51.100.0/24",
                                             "trusted_proxies": "198.18.0.10/32"})
    app = create_app(restricted)
    async with app.router.lifespan_context(app):
        yield app


def client_at(app: object, address: str, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url=EXTERNAL_URL, headers=headers)


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("acme_ra_client_network_refusals_total", {"reason": reason}) or 0.0


async def test_an_address_in_no_network_is_refused_everything(restricted_app: object) -> None:
    before = refusals("network")
    async with client_at(restricted_app, "203.0.113.9") as http:
        for method, path in (("GET", "/acme/acme/directory"), ("HEAD", "/acme/acme/new-nonce"),
                             ("GET", "/acme/acme/new-nonce"), ("POST", "/acme/acme/new-account"),
                             ("GET", "/acme/acme/renewal-info/abc.def")):
            response = await http.request(method, path, content=b"{}",
                                          headers={"Content-Type": "application/jose+json"})
            assert response.status_code == 403, (method, path)
            assert "replay-nonce" not in response.headers
            if method != "HEAD":
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json() == {
                    "type": "urn:ietf:params:acme:error:unauthorized", "status": 403,
                    "detail": "203.0.113.9 may not use this ACME server "
                              "(the address is in none of its client networks)"}
        # Health checks are not ACME.
        assert (await http.get("/healthz")).status_code == 200
    assert refusals("network") == before + 5


async def test_an_untrusted_peer_cannot_claim_another_address(restricted_app: object) -> None:
    async with client_at(restricted_app, "203.0.113.9", **{"X-Forwarded-For": "10.1.2.3"}) as http:
        assert (await http.get("/acme/acme/directory")).status_code == 403
    async with client_at(restricted_app, "198.18.0.10", **{"X-Forwarded-For": "10.1.2.3"}) as http:
        assert (await http.get("/acme/acme/directory")).status_code == 200
    async with client_at(restricted_app, "198.18.0.10") as http:  # the proxy itself is no client
        assert (await http.get("/acme/acme/directory")).status_code == 403


@pytest.mark.parametrize(("peer", "forwarded", "allowed", "refused"), [
    ("10.1.2.3", None, "www.physics.example.edu", "www.chem.example.edu"),
    ("198.18.0.10", "10.1.2.3", "www.physics.example.edu", "www.chem.example.edu"),
    ("198.18.0.10", "2001:db8:1::7", "a.v6.example.edu", "*.v6.example.edu"),
    ("198.51.100.20", None, "anything.example.org", None),
])
async def test_new_order_within_the_networks_rules(restricted_app: object, peer: str, forwarded: str | None,
                                                   allowed: str, refused: str | None) -> None:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    async with client_at(restricted_app, peer, **headers) as http:
        client = TestAcmeClient(http, f"{EXTERNAL_URL}/acme/acme/directory")
        await client.load_directory()
        assert (await client.register()).status == 201
        order = await client.post(client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": allowed}]})
        assert order.status == 201, order.body
        if refused is None:
            return
        before = refusals("identifier")
        both = [{"type": "dns", "value": allowed}, {"type": "dns", "value": refused}]
        reply = await client.post(client.directory["newOrder"], {"identifiers": both})
        assert reply.status == 400 and reply.problem_type == "rejectedIdentifier", reply.body
        assert [sub["identifier"]["value"] for sub in reply.body["subproblems"]] == [refused]
        assert reply.body["detail"].startswith(f"{refused}: ")
        assert refusals("identifier") == before + 1
