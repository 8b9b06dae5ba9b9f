"""The lab's remote network perspectives (``make lab PERSPECTIVES=N``, default 3): validators with
``ACME_RA_VALIDATOR_ROLE=remote``, each its own process, name and region, as docker-compose's
``perspective-1..3``. The lab's validators then ask all of them (``ACME_RA_MPIC_REMOTE_PERSPECTIVES``)
unless that is set. On one machine they share the lab's DNS (pebble-challtestsrv); in a real
deployment each has resolvers of its own site (docs/perspectives.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from acme_ra.config import ENV_PREFIX
from acme_ra.perspectives import REGIONS
from acme_ra_tools.service_group import Service
from acme_ra_tools.supervisor import http_ok

# Perspectives `make lab` runs when PERSPECTIVES is not given.
DEFAULT_PERSPECTIVES = 3
# perspective-N's health and metrics listen on 9150+N.
PORT_BASE = 9150
# Regions given in turn: the BR rule wants the passing perspectives in 2 regions at least.
LAB_REGIONS = ("arin", "ripe", "apnic", "lacnic", "afrinic")
assert set(LAB_REGIONS) == set(REGIONS)


def perspective_env(number: int, listen: str) -> dict[str, str]:
    """What makes validator process ``number`` the remote perspective ``perspective-<number>``."""
    return {
        ENV_PREFIX + "VALIDATOR_ROLE": "remote",
        ENV_PREFIX + "VALIDATOR_PERSPECTIVE": f"perspective-{number}",
        ENV_PREFIX + "VALIDATOR_REGION": LAB_REGIONS[(number - 1) % len(LAB_REGIONS)],
        ENV_PREFIX + "VALIDATOR_LISTEN": listen,
        "OTEL_SERVICE_NAME": f"acme-ra-perspective-{number}",
    }


def perspective_service(number: int, port: int, service_env: Callable[..., dict[str, str]]) -> Service:
    """The lab's ``perspective-<number>`` (its NATS user: ``perspective``)."""
    base = f"http://127.0.0.1:{port}"
    env = service_env("perspective", **perspective_env(number, f"127.0.0.1:{port}"))
    return Service(f"perspective-{number}", [sys.executable, "-m", "acme_ra_validator"], env,
                   ready=lambda: http_ok(base + "/readyz"), endpoints={"metrics": base + "/metrics"})
