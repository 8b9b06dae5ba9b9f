"""The bus contract of multi-perspective corroboration (MPIC, CA/B Forum BR 3.2.2.9).

A primary validator (the one that took the ``ValidateJob``) asks remote perspectives — validators
started with ``ACME_RA_VALIDATOR_ROLE=remote``, a name, a region and their own DNS resolvers,
needing NATS only — to run the same check, over core NATS request/reply:

- ``acme.perspectives.heartbeat.<name>``: every remote perspective says it is alive
  (``PerspectiveHeartbeat``) every ``HEARTBEAT_INTERVAL_SECONDS``; primaries keep who was heard
  within ``HEARTBEAT_EXPIRY_SECONDS``. Discovery costs no round trip per validation, and a
  perspective behind a NATS leaf node is discovered the same way.
- ``acme.perspectives.check.<name>``: a ``PerspectiveCheckRequest`` to one perspective by name
  (its replicas share a queue group of that name); the ``PerspectiveCheckReply`` echoes the
  request's ``request_id`` and names the perspective that answered: the primary drops a reply
  whose id or name is not the one it asked (a reply is bound to its request).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SUBJECT_PREFIX = "acme.perspectives"
SUBJECT_HEARTBEATS = f"{SUBJECT_PREFIX}.heartbeat.*"
SUBJECT_CHECKS = f"{SUBJECT_PREFIX}.check.*"
# Regional internet registries: the regions a perspective may name (BR: the corroborating
# perspectives span at least 2 of them).
REGIONS = ("afrinic", "apnic", "arin", "lacnic", "ripe")
# How often a remote perspective says it is alive, and how long a primary trusts the last word.
HEARTBEAT_INTERVAL_SECONDS = 2.0
HEARTBEAT_EXPIRY_SECONDS = 6.0


def heartbeat_subject(name: str) -> str:
    return f"{SUBJECT_PREFIX}.heartbeat.{name}"


def check_subject(name: str) -> str:
    return f"{SUBJECT_PREFIX}.check.{name}"


class PerspectiveHeartbeat(BaseModel):
    """A remote perspective is alive (remote → primaries)."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    name: str
    region: str


class PerspectiveCheckRequest(BaseModel):
    """Run one challenge's check (and CAA) from this perspective (primary → one perspective).

    Everything the check needs travels with it: the perspective has no database."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    # A random id the reply must echo, and the perspective asked.
    request_id: str
    perspective: str
    challenge_id: str
    type: str
    token: str
    identifier_type: str
    identifier_value: str
    wildcard: bool = False
    account_id: str
    key_thumbprint: str
    provisioner: str | None = None
    # The primary's CAA rules: issuer domain names and account URI base (empty: no CAA check).
    caa_identities: list[str] = []
    external_url: str = ""
    # The issuer domain names a dns-persist-01 record may name (ACME_RA_DNS_PERSIST_ISSUER_DOMAINS).
    persist_issuer_domains: list[str] = []


class PerspectiveCheckReply(BaseModel):
    """One perspective's result: ``outcome`` valid | invalid (``problem`` as data), the
    addresses it resolved for the check (http-01, tls-alpn-01)."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1] = 1
    request_id: str
    perspective: str
    region: str
    outcome: Literal["valid", "invalid"]
    problem: dict[str, Any] | None = None
    addresses: list[str] = []
