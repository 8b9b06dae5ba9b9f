"""/healthz (the process is alive) and /readyz (it can serve: database and NATS answer).

Load balancers probe these on the ACME listener; they sit outside /acme/ and carry no nonce.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request
from fastapi.responses import Response

from acme_ra_frontend.render import json_response
from acme_ra_frontend.repo import nonces as repo_nonces
from acme_ra_frontend.state import FrontendState

log = logging.getLogger("acme_ra_frontend.health")

# How long /readyz waits for the database before calling it down (seconds).
READY_TIMEOUT = 2.0


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    state: FrontendState | None = getattr(request.app.state, "ra", None)
    checks: dict[str, str] = {}
    if state is None or state.stopping:
        return json_response({"status": "stopping"}, 503)
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await repo_nonces.ping(state.db)
        checks["database"] = "ok"
    except Exception as error:  # noqa: BLE001 - reported, not raised: the detail to the log only
        log.warning("readiness: the database does not answer: %s", str(error) or type(error).__name__)
        checks["database"] = "down"
    checks["nats"] = "ok" if state.nc.is_connected else "down"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503)
