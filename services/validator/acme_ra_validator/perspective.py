"""A remote network perspective (``ACME_RA_VALIDATOR_ROLE=remote``): NATS only, no database.

It says it is alive on ``acme.perspectives.heartbeat.<name>`` and answers the check requests a
primary sends to ``acme.perspectives.check.<name>`` (queue group ``<name>``: replicas of one
perspective share them) with the primary's check code (``checker.check_once``), its own DNS
resolvers (``ACME_RA_DNS_RESOLVERS``) and its own network policy. Each reply echoes the
request's id and names this perspective (acme_ra.perspectives). It can run in another site
behind a NATS leaf node (docs/perspectives.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from acme_ra import bus, natsauth, perspectives, telemetry
from acme_ra.config import Settings
from acme_ra_validator.checker import check_once
from acme_ra_validator.health import add_health_routes
from acme_ra_validator.http01 import new_http_client
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.worker import ChallengeToCheck, ValidationOptions

log = logging.getLogger("acme_ra_validator.perspective")


class Perspective:
    """Answers the check requests of one perspective name."""

    def __init__(self, settings: Settings, resolver: NameResolver) -> None:
        self.name = settings.validator_perspective
        self.region = settings.validator_region
        self.resolver = resolver
        self.options = ValidationOptions.from_settings(settings)
        self.http = new_http_client()
        self.nc: NATS | None = None
        self.subscribed = False
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, settings: Settings, stop: asyncio.Event) -> None:
        """Connect (retrying forever), subscribe, say it is alive until ``stop``."""
        self.nc = await bus.connect(settings.nats_url, f"acme-ra-perspective-{self.name}",
                                    natsauth.connect_options(settings, "perspective"))
        await self.nc.subscribe(perspectives.check_subject(self.name), queue=self.name, cb=self._on_request)
        self.subscribed = True
        log.info("perspective answering checks", extra={"perspective": self.name, "region": self.region})
        beat = perspectives.PerspectiveHeartbeat(name=self.name, region=self.region).model_dump_json().encode()
        while not stop.is_set():
            if self.nc.is_connected:
                try:
                    await self.nc.publish(perspectives.heartbeat_subject(self.name), beat)
                except Exception as error:  # noqa: BLE001 - the next beat tries again
                    log.warning("heartbeat not sent: %s", error)
            try:
                await asyncio.wait_for(stop.wait(), perspectives.HEARTBEAT_INTERVAL_SECONDS)
            except TimeoutError:
                pass

    async def _on_request(self, message: Msg) -> None:
        # Answer in a task of its own: nats-py runs one callback at a time per subscription.
        task = asyncio.create_task(self._answer(message))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, message: Msg) -> None:
        try:
            request = perspectives.PerspectiveCheckRequest.model_validate_json(message.data)
        except ValidationError:
            log.warning("unreadable perspective check request")
            return
        if request.perspective != self.name:
            log.warning("check request for another perspective", extra={"asked": request.perspective})
            return
        reply = await self.check(request)
        try:
            await message.respond(reply.model_dump_json().encode())
        except Exception as error:  # noqa: BLE001 - the primary counts this perspective as unavailable
            log.warning("perspective reply not sent: %s", error)

    async def check(self, request: perspectives.PerspectiveCheckRequest) -> perspectives.PerspectiveCheckReply:
        started = time.monotonic()
        challenge = ChallengeToCheck(
            challenge_id=request.challenge_id, authz_id="", type=request.type, status="processing",
            token=request.token, identifier_type=request.identifier_type, identifier_value=request.identifier_value,
            wildcard=request.wildcard, account_id=request.account_id, key_thumbprint=request.key_thumbprint,
            provisioner=request.provisioner,
        )
        options = dataclasses.replace(self.options, caa_identities=tuple(request.caa_identities),
                                      external_url=request.external_url or self.options.external_url,
                                      persist_issuer_domains=tuple(request.persist_issuer_domains))
        problem, addresses = await check_once(self.http, self.resolver, options, challenge)
        outcome = "valid" if problem is None else "invalid"
        log.info("perspective check done", extra={
            "perspective": self.name, "challenge_id": request.challenge_id, "challenge_type": request.type,
            "result": "valid" if problem is None else problem["type"], "addresses": addresses,
            "duration_ms": round((time.monotonic() - started) * 1000, 1)})
        return perspectives.PerspectiveCheckReply(request_id=request.request_id, perspective=self.name,
                                                  region=self.region, outcome=outcome, problem=problem,
                                                  addresses=addresses)

    async def close(self) -> None:
        if self._running:
            await asyncio.wait(list(self._running))
        if self.nc is not None:
            await self.nc.close()
        await self.http.aclose()


def create_app(settings: Settings) -> FastAPI:
    """The remote perspective's app: /healthz, /readyz (NATS), /metrics; the bus in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        perspective = Perspective(settings, NameResolver.from_settings(settings))
        stop = asyncio.Event()
        task = asyncio.create_task(perspective.run(settings, stop), name="perspective")
        app.state.perspective, app.state.task = perspective, task
        log.info("remote perspective started", extra={"perspective": perspective.name, "region": perspective.region})
        try:
            yield
        finally:
            stop.set()
            if perspective.subscribed:
                await asyncio.wait([task])
            else:
                while not task.done():  # still connecting: nothing in flight
                    task.cancel()
                    await asyncio.wait([task], timeout=0.2)
            await perspective.close()
            if telemetry.tracing_enabled():
                telemetry.shutdown_tracing()

    app = FastAPI(title="acme-ra perspective", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    async def checks(request: Request) -> dict[str, str]:
        perspective: Perspective = request.app.state.perspective
        nc = perspective.nc
        nats_state = "connecting" if nc is None else ("ok" if nc.is_connected else "disconnected")
        return {"nats": nats_state, "perspective": "ok" if perspective.subscribed else "starting"}

    add_health_routes(app, checks)
    return app
