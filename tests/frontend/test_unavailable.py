"""A database or NATS outage answers 503 serverInternal with Retry-After; a bug answers 500."""

from __future__ import annotations

import httpx
import nats.errors
import pytest
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import Response

from acme_ra_frontend.errors import guarded


def app_raising(error: Exception) -> FastAPI:
    async def endpoint(request: Request) -> Response:
        raise error

    app = FastAPI()
    app.add_api_route("/x", guarded(endpoint), methods=["GET"])
    return app


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("db down")), 503),
        (sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True), 503),
        (nats.errors.TimeoutError(), 503),
        (ConnectionResetError(), 503),
        (KeyError("bug"), 500),
    ],
)
async def test_outage_is_503_and_bug_is_500(error: Exception, status: int) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_raising(error)), base_url="http://t") as client:
        response = await client.get("/x")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:ietf:params:acme:error:serverInternal"
    assert int(response.headers["retry-after"]) > 0
    assert "bug" not in response.text and "db down" not in response.text


async def test_wrapped_asyncpg_outage_is_503() -> None:
    import asyncpg.exceptions

    try:
        try:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")
        except Exception as inner:
            raise RuntimeError("adapted") from inner
    except RuntimeError as adapted:
        wrapped = sqlalchemy.exc.DBAPIError("SELECT 1", {}, adapted)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_raising(wrapped)), base_url="http://t") as client:
        response = await client.get("/x")
    assert response.status_code == 503
