"""Client networks against the real processes: who may use the ACME API, and what each network may
order, asked directly and through a trusted proxy (HAProxy, as deploy/haproxy/haproxy.cfg runs it),
with rules changed in ACME_RA_CONFIG_FILE while the frontend runs.

The lab's frontend listens on 127.0.0.1; every 127.x.y.z address is loopback on Linux, so a client
bound to 127.0.0.2 or 127.0.0.3 (or ::1) is another client address. HAProxy listens on 127.0.0.6
(and ::1) on the frontend's port and reaches the frontend from 127.0.0.5, the one trusted proxy;
the clients keep the external URL (https://localhost:<port>, which JWS "url" must match) and are
routed to one or the other (``Route``).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx

from acme_ra_tools.lab_infrastructure import haproxy_binary
from tests.conformance.client import Reply, TestAcmeClient
from tests.hostile.conftest import Timer, assert_still_up
from tests.support.lab import Lab

PROXY_SOURCE = "127.0.0.5"  # HAProxy's address towards the frontend: ACME_RA_TRUSTED_PROXIES
PROXY_ADDRESS = "127.0.0.6"  # where clients reach HAProxy
# How long a change of the file may take to apply (the frontend looks every 2 s).
RELOAD_WITHIN_SECONDS = 15.0

LabFactory = Callable[..., AbstractContextManager[Lab]]


class Route(httpx.AsyncBaseTransport):
    """Every request goes to ``address`` from ``source`` whatever its URL's host, with TLS checked
    against the URL's host: the client keeps the URLs of the directory."""

    def __init__(self, address: str, source: str, ca_bundle: Path) -> None:
        self.address = address
        self.inner = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=str(ca_bundle)),
                                              local_address=source)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions = {**request.extensions, "sni_hostname": request.url.host}
        request.url = request.url.copy_with(host=self.address)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def client(lab: Lab, source: str, via: str = "127.0.0.1", **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Route(via, source, lab.ca_bundle), headers=headers, timeout=15)


@contextmanager
def haproxy(lab: Lab, tmp_path: Path) -> Iterator[None]:
    """HAProxy on PROXY_ADDRESS and ::1 (the frontend's port), adding X-Forwarded-For as the
    shipped configuration does (``option forwardfor``), connecting from PROXY_SOURCE."""
    binary = haproxy_binary()
    assert binary, "haproxy is not installed: apt-get install -y haproxy"
    cert, key = lab.topology.settings.frontend_tls_paths
    pem = tmp_path / "haproxy.pem"
    pem.write_text(cert.read_text() + key.read_text())
    port = lab.ports.frontend
    config = tmp_path / "haproxy.cfg"
    server_options = f"ssl verify required ca-file {lab.ca_bundle} verifyhost localhost source {PROXY_SOURCE}"
    config.write_text(f"""\
defaults
    mode http
    option forwardfor
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend acme
    bind {PROXY_ADDRESS}:{port} ssl crt {pem}
    bind [::1]:{port} ssl crt {pem}
    default_backend frontend
backend frontend
    server frontend 127.0.0.1:{port} {server_options}
""")
    process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((PROXY_ADDRESS, port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "haproxy did not start listening"
                time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]


async def directory_status(lab: Lab, source: str, via: str = "127.0.0.1", **headers: str) -> Reply:
    async with client(lab, source, via, **headers) as http:
        response = await http.get(lab.directory_url)
    body = response.json() if response.headers.get("content-type", "").endswith("json") else None
    return Reply(response.status_code, response.headers, body, response.text)


def assert_refused(reply: Reply, address: str) -> None:
    assert reply.status == 403, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.problem_type == "unauthorized"
    assert reply.body["detail"] == (f"{address} may not use this ACME server "
                                    "(the address is in none of its client networks)")


async def order(lab: Lab, source: str, names: list[str], via: str = "127.0.0.1", **headers: str) -> Reply:
    """A new account and one order for ``names``, from ``source``."""
    async with client(lab, source, via, **headers) as http:
        acme = TestAcmeClient(http, lab.directory_url)
        await acme.load_directory()
        assert (await acme.register()).status == 201
        return await acme.post(acme.directory["newOrder"],
                               {"identifiers": [{"type": "dns", "value": name} for name in names]})


def assert_rejected(reply: Reply, name: str, network: str) -> None:
    assert reply.status == 400 and reply.problem_type == "rejectedIdentifier", reply.text
    assert reply.body["detail"] == f"{name}: not in the names clients in {network} may request"
    assert [sub["identifier"]["value"] for sub in reply.body["subproblems"]] == [name]


def refusals(lab: Lab) -> dict[str, float]:
    text = httpx.get(f"http://{lab.topology.settings.metrics_listen}/metrics", timeout=10).text
    found = re.findall(r'^acme_ra_client_network_refusals_total\{reason="(\w+)"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return {reason: float(value) for reason, value in found}


def gauge(lab: Lab, name: str) -> float:
    text = httpx.get(f"http://{lab.topology.settings.metrics_listen}/metrics", timeout=10).text
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


RULES = """\
client_networks:
  127.0.0.1/32: [.allowed.acme-ra.test]   # the launcher's readiness probe comes from here too
  ::1/128: [.v6.acme-ra.test]
  10.1.0.0/16: [.physics.acme-ra.test]
"""


def test_client_networks_directly_and_through_a_trusted_proxy(own_lab: LabFactory, tmp_path: Path) -> None:
    rules = tmp_path / "acme-ra.yaml"
    rules.write_text(RULES)
    with own_lab(ACME_RA_CONFIG_FILE=str(rules), ACME_RA_POLICY_CLIENT_NETWORKS="127.0.0.3/32",
                 ACME_RA_TRUSTED_PROXIES=f"{PROXY_SOURCE}/32") as lab, haproxy(lab, tmp_path):

        async def scenario() -> None:
            # Directly. 127.0.0.1 may order names under allowed.acme-ra.test only.
            assert (await directory_status(lab, "127.0.0.1")).status == 200
            assert (await order(lab, "127.0.0.1", ["www.allowed.acme-ra.test"])).status == 201
            assert_rejected(await order(lab, "127.0.0.1", ["www.allowed.acme-ra.test", "www.other.acme-ra.test"]),
                            "www.other.acme-ra.test", "127.0.0.1/32")
            # 127.0.0.3 (ACME_RA_POLICY_CLIENT_NETWORKS) may order any name the policy allows.
            assert (await order(lab, "127.0.0.3", ["www.other.acme-ra.test"])).status == 201
            # 127.0.0.2 is in no network: the directory, newNonce and every POST are refused.
            with Timer() as timer:
                assert_refused(await directory_status(lab, "127.0.0.2"), "127.0.0.2")
                async with client(lab, "127.0.0.2") as http:
                    nonce = await http.head(lab.directory_url.replace("/directory", "/new-nonce"))
                    assert nonce.status_code == 403 and "replay-nonce" not in nonce.headers
                    post = await http.post(lab.directory_url.replace("/directory", "/new-account"), content=b"{}",
                                           headers={"Content-Type": "application/jose+json"})
                    assert_refused(Reply(post.status_code, post.headers, post.json(), post.text), "127.0.0.2")
                # An untrusted peer's X-Forwarded-For is ignored.
                assert_refused(await directory_status(lab, "127.0.0.2", **{"X-Forwarded-For": "10.1.2.3"}),
                               "127.0.0.2")
            timer.assert_quick()

            # Through HAProxy (a trusted proxy): the client is the address HAProxy saw.
            assert (await order(lab, "127.0.0.3", ["www.other.acme-ra.test"], via=PROXY_ADDRESS)).status == 201
            assert_refused(await directory_status(lab, "127.0.0.2", via=PROXY_ADDRESS), "127.0.0.2")
            # A client's own X-Forwarded-For does not get it in: HAProxy adds the address it saw after it.
            assert_refused(await directory_status(lab, "127.0.0.2", via=PROXY_ADDRESS,
                                                  **{"X-Forwarded-For": "10.1.2.3"}), "127.0.0.2")
            assert_rejected(await order(lab, "127.0.0.1", ["www.other.acme-ra.test"], via=PROXY_ADDRESS),
                            "www.other.acme-ra.test", "127.0.0.1/32")
            # IPv6: ::1 may order names under v6.acme-ra.test only.
            assert (await order(lab, "::1", ["a.v6.acme-ra.test"], via="::1")).status == 201
            assert_rejected(await order(lab, "::1", ["www.allowed.acme-ra.test"], via="::1"),
                            "www.allowed.acme-ra.test", "::1/128")

        asyncio.run(scenario())
        # Every refusal counted: 6 of a network (4 direct, 2 through the proxy), 3 of an identifier.
        assert refusals(lab) == {"network": 6.0, "identifier": 3.0}
        assert gauge(lab, "acme_ra_client_networks") == 4
        assert_still_up(lab)


def test_client_networks_reload_without_a_restart(own_lab: LabFactory, tmp_path: Path) -> None:
    rules = tmp_path / "acme-ra.toml"
    rules.write_text('[client_networks]\n"127.0.0.1/32" = []\n')
    with own_lab(ACME_RA_CONFIG_FILE=str(rules)) as lab:
        frontend_pid = lab.topology.services["frontend"].process.pid

        def rewrite(text: str) -> None:
            rules.write_text(text)  # a new size each time: seen even where mtimes are coarse

        async def wait_for(source: str, status: int) -> Reply:
            deadline = time.monotonic() + RELOAD_WITHIN_SECONDS
            while True:
                reply = await directory_status(lab, source)
                if reply.status == status or time.monotonic() > deadline:
                    return reply
                await asyncio.sleep(0.25)

        async def scenario() -> None:
            assert_refused(await directory_status(lab, "127.0.0.2"), "127.0.0.2")
            # 127.0.0.2 added, with names under two.acme-ra.test: applies without a restart.
            rewrite('[client_networks]\n"127.0.0.1/32" = []\n"127.0.0.2/32" = [".two.acme-ra.test"]\n')
            assert (await wait_for("127.0.0.2", 200)).status == 200
            assert (await order(lab, "127.0.0.2", ["a.two.acme-ra.test"])).status == 201
            assert_rejected(await order(lab, "127.0.0.2", ["a.three.acme-ra.test"]), "a.three.acme-ra.test",
                            "127.0.0.2/32")
            # A bad file: the rules in force stay (127.0.0.2 keeps its access), one log line.
            rewrite('[client_networks]\n"127.0.0.1/32" = []\n"127.0.0.0/99" = []\n')
            await asyncio.sleep(3 * 2.0)
            assert (await directory_status(lab, "127.0.0.2")).status == 200
            assert gauge(lab, "acme_ra_client_networks_file_valid") == 0
            # 127.0.0.2 removed: refused again.
            rewrite('[client_networks]\n"127.0.0.1/32" = []\n')
            assert_refused(await wait_for("127.0.0.2", 403), "127.0.0.2")
            assert gauge(lab, "acme_ra_client_networks_file_valid") == 1

        asyncio.run(scenario())
        log = (lab.topology.log_dir / "frontend.log").read_text()
        not_reloaded = [line for line in log.splitlines() if "client networks not reloaded" in line]
        assert len(not_reloaded) == 1, not_reloaded
        assert "'127.0.0.0/99' is not a CIDR" in not_reloaded[0]
        assert lab.topology.services["frontend"].process.pid == frontend_pid
        assert lab.topology.services["frontend"].returncode is None
        assert_still_up(lab)


def test_a_bad_file_stops_the_frontend_with_one_line(tmp_path: Path) -> None:
    rules = tmp_path / "acme-ra.yaml"
    rules.write_text("client_networks:\n  10.1.0.0/16: [.ok.example, 10.0.0.0/99]\n")
    env = {"ACME_RA_CONFIG_FILE": str(rules), "ACME_RA_STATE_DIR": str(tmp_path / "var"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "acme_ra_frontend"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [(
        f"acme-ra: invalid configuration: ACME_RA_CONFIG_FILE ({rules}): client_networks.10.1.0.0/16: "
        "bad identifier rule: '10.0.0.0/99' does not appear to be an IPv4 or IPv6 network")]
