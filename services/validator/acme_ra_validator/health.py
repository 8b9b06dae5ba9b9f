"""/healthz, /readyz and /metrics of a validator process, primary or remote perspective: the
same answers, each role with its own readiness checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from acme_ra_validator import metrics

# A role's readiness: each check's name and "ok" or what is wrong.
Checks = Callable[[Request], Awaitable[dict[str, str]]]


def add_health_routes(app: FastAPI, checks: Checks) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        found = await checks(request)
        ready = all(value == "ok" for value in found.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", "checks": found}, 200 if ready else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)
