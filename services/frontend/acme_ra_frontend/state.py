"""What a frontend process holds for its lifetime: settings, database, NATS, nonces."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import partial

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from acme_ra import bus
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.protocol.policy import Policy
from acme_ra.sealing import Sealer
from acme_ra_frontend.nonces import NonceService
from acme_ra_frontend.outbox import Outbox
from acme_ra_frontend.urls import Urls
from acme_ra_frontend.waiting import WorkEvents


@dataclass
class FrontendState:
    settings: Settings
    db: Database
    nc: NATS
    js: JetStreamContext
    nonces: NonceService
    sealer: Sealer
    policy: Policy
    urls: dict[str, Urls] = field(default_factory=dict)
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    stopping: bool = False
    # Requests waiting for the validator's or signer's event (waiting.py).
    work_events: WorkEvents = field(default_factory=WorkEvents)
    # "/acme/<provisioner>/new-nonce" → its Link rel="index" header, encoded once (headers.AcmeHeaders).
    new_nonce_links: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)

    # Jobs whose publish failed, retried within seconds (the reconciler is the last resort).
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(partial(bus.publish_job, self.js), lambda: self.nc.is_connected)

    def urls_for(self, provisioner: str) -> Urls | None:
        return self.urls.get(provisioner)
