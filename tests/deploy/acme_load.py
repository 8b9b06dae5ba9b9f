"""What the lab tests send through the load balancer: many orders from a few accounts, with a
record of which frontend answered each request and where each nonce came from.

The client is the tests' own JWS client (tests/conformance/client.py); an httpx response hook
sees every exchange, so nothing here trusts the client to report its own mistakes.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import httpx
from cryptography import x509

from tests.conformance.client import TestAcmeClient, make_csr

# How long one order may take from newOrder to the certificate (seconds).
ORDER_TIMEOUT_SECONDS = 60.0
# How often an authorization or order is polled (seconds): faster than Retry-After, on purpose.
POLL_SECONDS = 0.2
CHALLENGE_PATH = "/.well-known/acme-challenge/"


class ChallengeServer:
    """http-01 answers on 127.0.0.1:``port``, after ``delay`` seconds (a slow client on purpose).
    Records when each token was served."""

    def __init__(self, port: int) -> None:
        self.tokens: dict[str, str] = {}
        self.delay = 0.0
        self.served: dict[str, float] = {}  # token -> monotonic time its answer was sent
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                token = self.path.removeprefix(CHALLENGE_PATH)
                answer = owner.tokens.get(token) if self.path.startswith(CHALLENGE_PATH) else None
                if owner.delay:
                    time.sleep(owner.delay)
                body = (answer or "not found").encode()
                self.send_response(200 if answer else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if answer:
                    owner.served[token] = time.monotonic()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-01", daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Traffic:
    """Every exchange through the load balancer, as the response hook saw it."""

    served_by: Counter[str] = field(default_factory=Counter)
    nonce_origin: dict[str, str] = field(default_factory=dict)  # nonce -> frontend that issued it
    nonces_redeemed: int = 0
    nonces_crossed: int = 0  # redeemed on another frontend than the one that issued them
    bad_nonces: int = 0
    misrouted: int = 0  # served by another frontend than the one the request named
    problems: Counter[str] = field(default_factory=Counter)
    sequences: dict[int, list[str]] = field(default_factory=dict)  # client id -> frontends in order

    def alternate(self, client_id: int, frontends: tuple[str, ...] = ("frontend-1", "frontend-2")) -> Any:
        """A request hook that sends a client's requests to each frontend in turn (HAProxy's
        X-Acme-Ra-Frontend, honoured in labs)."""
        turn = [client_id]

        async def on_request(request: httpx.Request) -> None:
            request.headers["X-Acme-Ra-Frontend"] = frontends[turn[0] % len(frontends)]
            turn[0] += 1

        return on_request

    def hook(self, client_id: int) -> Any:
        async def on_response(response: httpx.Response) -> None:
            frontend = response.headers.get("x-served-by", "?")
            wanted = response.request.headers.get("x-acme-ra-frontend")
            self.misrouted += wanted is not None and wanted != frontend
            self.served_by[frontend] += 1
            self.sequences.setdefault(client_id, []).append(frontend)
            nonce = response.headers.get("replay-nonce")
            if nonce:
                self.nonce_origin[nonce] = frontend
            if response.request.method == "POST":
                used = _jws_nonce(response.request.content)
                if used is not None and used in self.nonce_origin:
                    self.nonces_redeemed += 1
                    self.nonces_crossed += self.nonce_origin[used] != frontend
            if response.headers.get("content-type", "").startswith("application/problem+json"):
                await response.aread()
                kind = str(response.json().get("type", "")).removeprefix("urn:ietf:params:acme:error:")
                self.problems[kind] += 1
                self.bad_nonces += kind == "badNonce"

        return on_response

    def alternation(self) -> float:
        """Share of a client's consecutive requests that went to another frontend than the last."""
        changes = pairs = 0
        for sequence in self.sequences.values():
            for before, after in itertools.pairwise(sequence):
                pairs += 1
                changes += before != after
        return changes / pairs if pairs else 0.0


def _jws_nonce(body: bytes) -> str | None:
    try:
        protected = json.loads(body)["protected"]
        header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
        return str(header["nonce"])
    except (ValueError, KeyError, TypeError):
        return None


async def new_account(http: httpx.AsyncClient, directory_url: str) -> TestAcmeClient:
    client = TestAcmeClient(http, directory_url)
    await client.load_directory()
    reply = await client.register()
    assert reply.status == 201, reply.text
    return client


async def _poll(client: TestAcmeClient, url: str, done: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + ORDER_TIMEOUT_SECONDS
    while True:
        reply = await client.post(url)
        assert reply.status == 200, reply.text
        if reply.body["status"] in done:
            return dict(reply.body)
        assert reply.body["status"] not in ("invalid", "revoked", "deactivated", "expired"), reply.text
        assert time.monotonic() < deadline, f"{url} still {reply.body['status']}"
        await asyncio.sleep(POLL_SECONDS)


async def order_challenge(client: TestAcmeClient, name: str, challenges: ChallengeServer) -> tuple[str, str, str]:
    """newOrder for ``name``; publish its http-01 answer. Returns (order, authz, challenge) URLs."""
    reply = await client.post(client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
    assert reply.status == 201, reply.text
    order_url = reply.location
    assert order_url is not None
    authz_url = reply.body["authorizations"][0]
    authz = await client.post(authz_url)
    assert authz.status == 200, authz.text
    challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
    challenges.tokens[challenge["token"]] = client.key_authorization(challenge["token"])
    return order_url, authz_url, challenge["url"]


async def answer(client: TestAcmeClient, challenge_url: str) -> None:
    reply = await client.post(challenge_url, {})
    assert reply.status == 200, reply.text


async def wait_valid(client: TestAcmeClient, authz_url: str) -> None:
    await _poll(client, authz_url, {"valid"})


async def issue(client: TestAcmeClient, name: str, challenges: ChallengeServer) -> x509.Certificate:
    """One certificate for ``name`` (http-01), from newOrder to the download."""
    order_url, authz_url, challenge_url = await order_challenge(client, name, challenges)
    await answer(client, challenge_url)
    await wait_valid(client, authz_url)
    order = await _poll(client, order_url, {"ready", "valid"})
    csr, _ = make_csr([name])
    reply = await client.post(order["finalize"], {"csr": base64.urlsafe_b64encode(csr).rstrip(b"=").decode()})
    assert reply.status == 200, reply.text
    order = await _poll(client, order_url, {"valid"})
    reply = await client.post(order["certificate"])
    assert reply.status == 200, reply.text
    leaf = x509.load_pem_x509_certificates(reply.text.encode())[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [name]
    return leaf


def validations_total(metrics_text: str) -> float:
    """The sum of ``acme_ra_validations_total`` over its labels in a /metrics page."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("acme_ra_validations_total{")
    )
