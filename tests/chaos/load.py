"""ACME clients under faults: many orders at once through the tests' own JWS client
(tests/conformance/client.py), every exchange recorded by an httpx hook, and the figures each
chaos test prints (orders, faults injected, orders lost, duplicates, what the clients saw).

A client here behaves as a good ACME client should, and no better: it retries a 503 after its
``Retry-After``, a badNonce with the fresh nonce, a refused connection after a pause; it never
hides a 500 or a hang, it counts them. Every request has a timeout, every order a deadline, so
nothing waits forever.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from tests.conformance.client import Reply, TestAcmeClient, make_csr

# One HTTP request to the frontend: no answer in this long is a hang (seconds).
REQUEST_TIMEOUT_SECONDS = 30.0
# How often a client polls an authorization or order when no Retry-After says otherwise (seconds).
POLL_SECONDS = 0.25
# The longest a client waits on a Retry-After (the frontend says 5 s on a 503; honoured up to this).
MAX_RETRY_AFTER_SECONDS = 5.0
CHALLENGE_PATH = "/.well-known/acme-challenge/"
# Where the figures of every chaos test are written at the end of the session.
FIGURES_FILE = Path("build") / "chaos-figures.json"


class ChallengeServer:
    """http-01 answers on 127.0.0.1:``port``, after ``delay`` seconds; counts the fetches of each
    token (a validation done twice fetches twice) and the fetches being answered right now."""

    def __init__(self, port: int) -> None:
        self.tokens: dict[str, str] = {}
        self.delay = 0.0
        self.fetches: Counter[str] = Counter()
        self.in_flight = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                token = self.path.removeprefix(CHALLENGE_PATH)
                with owner._lock:
                    owner.in_flight += 1
                    owner.fetches[token] += 1
                try:
                    if owner.delay:
                        time.sleep(owner.delay)
                    answer = owner.tokens.get(token) if self.path.startswith(CHALLENGE_PATH) else None
                    body = (answer or "not found").encode()
                    self.send_response(200 if answer else 404)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with owner._lock:
                        owner.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-01", daemon=True)
        self.thread.start()

    def fetched_twice(self) -> int:
        """Tokens fetched more than once (each a validation done more than once)."""
        return sum(1 for count in self.fetches.values() if count > 1)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Figures:
    """What one chaos test did and saw; printed and written to build/chaos-figures.json."""

    test: str
    orders: int = 0
    faults: list[str] = field(default_factory=list)
    valid: int = 0
    lost: int = 0  # not valid at the end: still pending/processing, or invalid
    duplicates: int = 0  # certificates beyond one per order (database or upstream)
    upstream_certificates: int | None = None  # what the upstream CA issued (Pebble's count)
    statuses: Counter[int] = field(default_factory=Counter)  # every HTTP status the clients saw
    server_errors: int = 0  # 500s (never allowed)
    unavailable: int = 0  # 503s
    unavailable_without_retry_after: int = 0
    hangs: int = 0  # requests that timed out (never allowed)
    slowest: float = 0.0  # the longest a request took to be answered (seconds)
    refused: int = 0  # connections refused (no frontend listening)
    dropped: int = 0  # connections closed or reset before the answer
    bad_nonces: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    samples_500: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def fault(self, description: str) -> None:
        self.faults.append(f"{time.strftime('%H:%M:%S')} {description}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "orders": self.orders, "faults injected": len(self.faults), "faults": self.faults,
            "valid": self.valid, "orders lost": self.lost, "duplicates": self.duplicates,
            "upstream certificates": self.upstream_certificates,
            "500s": self.server_errors, "503s": self.unavailable,
            "503s without Retry-After": self.unavailable_without_retry_after,
            "hangs": self.hangs, "slowest answer (s)": round(self.slowest, 1), "connections refused": self.refused,
            "connections dropped": self.dropped, "badNonce": self.bad_nonces,
            "statuses": dict(sorted(self.statuses.items())), "problems": dict(self.problems),
            "seconds": round(self.seconds, 1), **self.extra,
            **({"500 samples": self.samples_500} if self.samples_500 else {}),
        }

    def render(self) -> str:
        body = self.as_dict()
        lines = [(f"CHAOS {self.test}: orders={self.orders} faults={len(self.faults)} lost={self.lost} "
                 f"duplicates={self.duplicates} valid={self.valid} 500s={self.server_errors} "
                 f"503s={self.unavailable} hangs={self.hangs} in {self.seconds:.1f}s")]
        for key, value in body.items():
            if key not in ("orders", "faults injected", "orders lost", "duplicates", "valid", "seconds"):
                lines.append(f"    {key}: {value}")
        return "\n".join(lines)


class OrderFailed(Exception):
    """An order ended invalid, or did not end before its deadline."""


class Load:
    """ACME accounts and orders against one frontend, recording what every exchange returned."""

    def __init__(self, directory_url: str, ca_bundle: Path, challenges: ChallengeServer, figures: Figures,
                 zone: str, order_timeout: float = 120.0) -> None:
        self.directory_url = directory_url
        self.context = ssl.create_default_context(cafile=str(ca_bundle))
        self.challenges = challenges
        self.figures = figures
        self.zone = zone
        self.order_timeout = order_timeout
        self.http = httpx.AsyncClient(
            verify=self.context, trust_env=False, timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS, connect=5.0),
            # keep-alive shorter than uvicorn's 5 s: no request on a connection the server is closing
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=2.0),
            event_hooks={"response": [self._record]},
        )
        self.order_urls: list[str] = []
        self.certificates: dict[str, x509.Certificate] = {}  # order URL -> leaf
        # name -> when (time.monotonic()) its order was begun ("started"), its challenge was answered ("answered"), its order was
        # ready ("validated"), finalized ("finalized"), valid ("issued"): how long clients waited.
        self.timeline: dict[str, dict[str, float]] = {}

    async def close(self) -> None:
        await self.http.aclose()

    async def _record(self, response: httpx.Response) -> None:
        figures = self.figures
        figures.statuses[response.status_code] += 1
        if response.status_code == 503:
            figures.unavailable += 1
            figures.unavailable_without_retry_after += "retry-after" not in response.headers
        elif response.status_code >= 500:
            figures.server_errors += 1
            await response.aread()
            if len(figures.samples_500) < 5:
                figures.samples_500.append(
                    f"{response.request.method} {response.request.url.path} -> {response.status_code} "
                    f"{response.text[:300]}"
                )
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            await response.aread()
            try:
                kind = str(response.json().get("type", "")).removeprefix("urn:ietf:params:acme:error:")
            except ValueError:
                kind = "unparsable"
            figures.problems[kind] += 1
            figures.bad_nonces += kind == "badNonce"

    # One request, as a good client sends it ------------------------------------------------

    async def _pause(self, reply: Reply | None, default: float) -> None:
        wait = default
        if reply is not None and reply.headers.get("retry-after", "").isdigit():
            wait = min(float(reply.headers["retry-after"]), MAX_RETRY_AFTER_SECONDS)
        await asyncio.sleep(wait)

    async def post(self, client: TestAcmeClient, url: str, payload: Any = "", deadline: float | None = None,
                   **kwargs: Any) -> Reply:
        """POST (signed) until an answer that is not a 5xx, a badNonce or a dropped connection."""
        deadline = deadline or time.monotonic() + self.order_timeout
        while True:
            if time.monotonic() > deadline:
                raise OrderFailed(f"no answer from {url} before the deadline")
            reply = None
            sent = time.monotonic()
            try:
                reply = await client.post(url, payload, **kwargs)
                self.figures.slowest = max(self.figures.slowest, time.monotonic() - sent)
            except httpx.TimeoutException:
                self.figures.hangs += 1
                continue
            except httpx.ConnectError:
                self.figures.refused += 1
                await asyncio.sleep(0.5)
                continue
            except (httpx.TransportError, KeyError):  # dropped mid-request, or a nonce-less answer
                self.figures.dropped += 1
                await asyncio.sleep(0.5)
                continue
            if reply.status >= 500:
                await self._pause(reply, 1.0)
                continue
            if reply.problem_type == "badNonce":
                continue
            return reply

    async def get(self, url: str) -> httpx.Response:
        deadline = time.monotonic() + self.order_timeout
        while True:
            if time.monotonic() > deadline:
                raise OrderFailed(f"no answer from {url} before the deadline")
            try:
                response = await self.http.get(url)
            except httpx.TimeoutException:
                self.figures.hangs += 1
                continue
            except httpx.ConnectError:
                self.figures.refused += 1
                await asyncio.sleep(0.5)
                continue
            except httpx.TransportError:
                self.figures.dropped += 1
                await asyncio.sleep(0.5)
                continue
            if response.status_code < 500:
                return response
            await asyncio.sleep(1)

    # Accounts and orders ---------------------------------------------------------------------

    async def account(self) -> TestAcmeClient:
        client = TestAcmeClient(self.http, self.directory_url)
        response = await self.get(self.directory_url)
        client.directory = response.json()
        reply = await self.post(client, client.directory["newAccount"], {"termsOfServiceAgreed": True}, use_jwk=True)
        assert reply.status in (200, 201), reply.text
        client.kid = reply.location
        return client

    async def accounts(self, count: int) -> list[TestAcmeClient]:
        return list(await asyncio.gather(*(self.account() for _ in range(count))))

    async def poll(self, client: TestAcmeClient, url: str, wanted: set[str], deadline: float) -> dict[str, Any]:
        while True:
            reply = await self.post(client, url, deadline=deadline)
            if reply.status != 200:
                raise OrderFailed(f"{url}: {reply.status} {reply.text[:300]}")
            status = reply.body["status"]
            if status in wanted:
                return dict(reply.body)
            if status in ("invalid", "revoked", "deactivated", "expired"):
                raise OrderFailed(f"{url} is {status}: {json.dumps(reply.body)[:500]}")
            if time.monotonic() > deadline:
                raise OrderFailed(f"{url} still {status} at the deadline")
            await self._pause(reply, POLL_SECONDS)

    async def new_order(self, client: TestAcmeClient, name: str, deadline: float) -> tuple[str, dict[str, Any]]:
        reply = await self.post(client, client.directory["newOrder"],
                                {"identifiers": [{"type": "dns", "value": name}]}, deadline=deadline)
        if reply.status != 201 or reply.location is None:
            raise OrderFailed(f"newOrder: {reply.status} {reply.text[:300]}")
        self.order_urls.append(reply.location)
        return reply.location, dict(reply.body)

    async def challenge_of(self, client: TestAcmeClient, order: dict[str, Any], deadline: float) -> tuple[str, str]:
        """Publish the http-01 answer of the order's (one) authorization: (authz URL, challenge URL)."""
        authz_url = order["authorizations"][0]
        authz = await self.post(client, authz_url, deadline=deadline)
        if authz.status != 200:
            raise OrderFailed(f"authz: {authz.status} {authz.text[:300]}")
        challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
        self.challenges.tokens[challenge["token"]] = client.key_authorization(challenge["token"])
        return authz_url, challenge["url"]

    async def answer(self, client: TestAcmeClient, challenge_url: str, deadline: float) -> None:
        reply = await self.post(client, challenge_url, {}, deadline=deadline)
        if reply.status != 200:
            raise OrderFailed(f"challenge: {reply.status} {reply.text[:300]}")

    async def finalize(self, client: TestAcmeClient, order_url: str, order: dict[str, Any], name: str,
                       deadline: float) -> None:
        csr, _ = make_csr([name])
        payload = {"csr": base64.urlsafe_b64encode(csr).rstrip(b"=").decode()}
        reply = await self.post(client, order["finalize"], payload, deadline=deadline)
        # orderNotReady after a retry: the first finalize went through after all.
        if reply.status != 200 and reply.problem_type != "orderNotReady":
            raise OrderFailed(f"finalize: {reply.status} {reply.text[:300]}")

    async def download(self, client: TestAcmeClient, order_url: str, order: dict[str, Any], name: str,
                       deadline: float) -> None:
        reply = await self.post(client, order["certificate"], deadline=deadline)
        if reply.status != 200:
            raise OrderFailed(f"certificate: {reply.status} {reply.text[:300]}")
        leaf = x509.load_pem_x509_certificates(reply.text.encode())[0]
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [name]
        self.certificates[order_url] = leaf

    async def issue(self, client: TestAcmeClient, name: str) -> str:
        """One certificate for ``name`` (http-01) from newOrder to the download; the order URL."""
        deadline = time.monotonic() + self.order_timeout
        marks = self.timeline.setdefault(name, {})
        marks["started"] = time.monotonic()
        order_url, order = await self.new_order(client, name, deadline)
        _, challenge_url = await self.challenge_of(client, order, deadline)
        marks["answered"] = time.monotonic()
        await self.answer(client, challenge_url, deadline)
        order = await self.poll(client, order_url, {"ready", "valid"}, deadline)
        marks["validated"] = time.monotonic()
        if order["status"] == "ready":
            marks["finalized"] = time.monotonic()
            await self.finalize(client, order_url, order, name, deadline)
            order = await self.poll(client, order_url, {"valid"}, deadline)
        marks["issued"] = time.monotonic()
        await self.download(client, order_url, order, name, deadline)
        return order_url

    def name(self, label: str) -> str:
        return f"{label}.{self.zone}"

    async def run(self, clients: list[TestAcmeClient], count: int, label: str, stagger: float = 0.0) -> list[str]:
        """``count`` orders spread over ``clients``, all at once (``stagger`` seconds apart);
        the errors of the orders that failed (their number is the figure 'orders lost')."""
        self.figures.orders += count

        async def one(n: int) -> str | None:
            await asyncio.sleep(n * stagger)
            try:
                await self.issue(clients[n % len(clients)], self.name(f"{label}-{n}"))
            except (OrderFailed, AssertionError) as error:
                return str(error)
            return None

        results = await asyncio.gather(*(one(n) for n in range(count)))
        return [r for r in results if r is not None]


def waits(timeline: dict[str, dict[str, float]], killed: float, promoted: float | None = None) -> dict[str, object]:
    """How long orders waited on a fault (``Load.timeline``): those in flight at ``killed``, from
    then to their certificate; the first order issued after ``promoted`` (the recovery; default
    the fault itself); the slowest order."""
    promoted = killed if promoted is None else promoted
    in_flight = [marks["issued"] - killed for marks in timeline.values()
                 if marks.get("started", 0) <= killed < marks.get("issued", 0)]
    after = [marks["issued"] - promoted for marks in timeline.values() if marks.get("issued", 0) > promoted]
    took = [marks["issued"] - marks["started"] for marks in timeline.values() if "issued" in marks]
    return {
        "orders in flight at the fault": len(in_flight),
        "in-flight orders issued, seconds after the fault (max)": round(max(in_flight, default=0.0), 1),
        "first order issued, seconds after the recovery": round(min(after, default=-1.0), 1),
        "slowest order, newOrder to issued (s)": round(max(took, default=0.0), 1),
    }
