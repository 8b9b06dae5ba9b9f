"""Who may ask at all: the client-network rules (acme_ra.client_networks) in the frontend.

- ``ClientNetworkGate``: the outermost ASGI middleware. When rules are in force, a request under
  ``/acme/`` from an address in no client network is answered 403 ``unauthorized`` before
  anything else runs: the directory and newNonce too, so that a client's very first request
  says why (an open directory would only move the refusal to a HEAD newNonce, which has no body
  to explain it). The terms-of-service page, which a person opens in a browser wherever they
  are, and ``/healthz`` and ``/readyz`` (load balancers) stay open. The client address is the
  one the rate limits use (``ratelimits.client_address``: X-Forwarded-For from
  ACME_RA_TRUSTED_PROXIES only).
- ``check_identifiers``: at newOrder, each identifier must be allowed by the rules of the most
  specific network holding the client (``rejectedIdentifier`` otherwise).
- ``ClientNetworkWatch``: the rules in force, reloaded when ACME_RA_CONFIG_FILE changes; a file
  that does not load keeps the previous rules and logs one line.

Refusals are counted in ``acme_ra_client_network_refusals_total{reason}``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from fastapi import Request
from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from acme_ra.client_networks import (
    ClientNetwork,
    ClientNetworks,
    ClientNetworksError,
    file_signature,
    load_client_networks,
)
from acme_ra.config import Settings
from acme_ra.protocol.identifiers import Identifier
from acme_ra.protocol.problems import Problem, unauthorized
from acme_ra_frontend import ratelimits
from acme_ra_frontend.errors import problem_response

log = logging.getLogger("acme_ra.frontend.client_networks")

# How often ACME_RA_CONFIG_FILE is looked at for a change (seconds).
WATCH_INTERVAL_SECONDS = 2.0
# Where the gate leaves the client's network for the handlers (an ASGI scope key).
SCOPE_KEY = "acme_ra.client_network"

REFUSALS = Counter(
    "acme_ra_client_network_refusals_total",
    "Requests refused by the client-network rules: network (the address may not use the ACME API), "
    "identifier (a newOrder name outside its network's rules).",
    ["reason"],
)
NETWORKS = Gauge("acme_ra_client_networks", "Client networks in force (0: every address may use the ACME API).",
                 multiprocess_mode="max")
FILE_VALID = Gauge("acme_ra_client_networks_file_valid",
                   "0 when ACME_RA_CONFIG_FILE's client_networks did not load at the last change (the previous "
                   "rules stay in force), else 1.", multiprocess_mode="min")
for _reason in ("network", "identifier"):
    REFUSALS.labels(_reason)


class ClientNetworkWatch:
    """The rules in force in this process; ``reload_if_changed`` swaps them when the file changed
    and loads. Created at start-up, where a bad configuration raises ClientNetworksError."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.signature = file_signature(settings.config_file)
        self.rules: ClientNetworks = load_client_networks(settings)
        self.trusted_proxies = [ipaddress.ip_network(v.strip(), strict=False)
                                for v in settings.trusted_proxies.split(",") if v.strip()]
        NETWORKS.set(len(self.rules.networks))
        FILE_VALID.set(1)

    def reload_if_changed(self) -> bool:
        """Load the file again if it changed since the last look; True when new rules apply."""
        signature = file_signature(self.settings.config_file)
        if signature == self.signature:
            return False
        self.signature = signature  # taken before the read: a change during it is seen next time
        try:
            rules = load_client_networks(self.settings)
        except ClientNetworksError as error:
            FILE_VALID.set(0)
            log.error("client networks not reloaded, the previous rules stay in force: %s",
                      str(error).removeprefix("acme-ra: "))
            return False
        self.rules = rules
        NETWORKS.set(len(rules.networks))
        FILE_VALID.set(1)
        log.info("client networks reloaded: %d network(s)%s", len(rules.networks),
                 "" if rules.restricted else " (every address may use the ACME API)")
        return True

    async def run_forever(self) -> None:
        if self.settings.config_file is None:
            return  # the environment's rules cannot change without a restart
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            try:
                self.reload_if_changed()
            except Exception:  # the watch must outlive any surprise
                log.exception("client networks: reload failed")


class ClientNetworkGate:
    """Refuses ``/acme/`` requests from addresses in no client network (see the module)."""

    def __init__(self, app: ASGIApp, watch: ClientNetworkWatch) -> None:
        self.app = app
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rules = self.watch.rules
        if scope["type"] != "http" or not rules.restricted or not scope["path"].startswith("/acme/"):
            await self.app(scope, receive, send)
            return
        parts = scope["path"].split("/", 4)
        if len(parts) > 4 and parts[3] == "terms":  # accounts.TERMS_AGREEMENT: a person's browser
            await self.app(scope, receive, send)
            return
        address = ratelimits.client_address(Request(scope), self.watch.trusted_proxies)
        entry = rules.match(address)
        if entry is None:
            REFUSALS.labels("network").inc()
            log.info("client network: refused", extra={"client": address, "method": scope["method"],
                                                       "path": scope["path"]})
            response = problem_response(unauthorized(f"{address} may not use this ACME server "
                                                     "(the address is in none of its client networks)"))
            await response(scope, receive, send)
            return
        scope[SCOPE_KEY] = entry
        await self.app(scope, receive, send)


def client_network(request: Request) -> ClientNetwork | None:
    """The network the gate matched for this request (None: no rules in force)."""
    entry: Any = request.scope.get(SCOPE_KEY)
    return entry if isinstance(entry, ClientNetwork) else None


def check_identifiers(request: Request, identifiers: list[Identifier]) -> None:
    """newOrder: refuse identifiers outside the rules of the client's network, one subproblem each."""
    entry = client_network(request)
    if entry is None:
        return
    refused = []
    for identifier in identifiers:
        reason = entry.refusal(identifier)
        if reason:
            refused.append({"type": "rejectedIdentifier", "detail": f"{identifier.value}: {reason}",
                            "identifier": identifier.to_json()})
    if refused:
        REFUSALS.labels("identifier").inc()
        detail = (str(refused[0]["detail"]) if len(refused) == 1
                  else f"{len(refused)} identifiers are outside what clients in {entry.network} may request")
        raise Problem("rejectedIdentifier", detail, subproblems=refused)
