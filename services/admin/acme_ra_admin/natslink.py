"""The admin service's NATS connection: revocation (``acme.rpc.revoke``) and the queue backlog
need it; nothing else does, so the service starts without it and connects in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS

from acme_ra import bus
from acme_ra.redaction import mask_url
from acme_ra_admin.errors import Unavailable

log = logging.getLogger("acme_ra_admin.natslink")

# How long a command-line connection to NATS may take (seconds).
NATS_CONNECT_TIMEOUT_SECONDS = 3
# How many more times a short-lived command tries each NATS server after a refusal.
NATS_CONNECT_RETRIES = 1


async def _said_below(error: Exception) -> None:
    """nats-py's error callback of a one-shot connection: the failure is raised (Unavailable names
    it: an authorization violation without the admin's NATS credentials), not logged with a
    traceback."""


class NatsLink:
    """A NATS connection that may not exist yet: the admin service starts (and shows the
    database) while NATS is down, and connects in the background."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        # The admin user's credentials, inbox prefix and TLS (natsauth.connect_options).
        self.options = options or {}
        self.client: NATS | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def start(self) -> None:
        if self.url and self._task is None:
            self._task = asyncio.create_task(self._connect_forever(), name="admin-nats-connect")

    async def connect_once(self) -> None:
        """For short-lived commands: connect now or raise :class:`Unavailable`."""
        if not self.url:
            raise Unavailable("ACME_RA_NATS_URL is not set")
        try:
            self.client = await nats.connect(
                [server.strip() for server in self.url.split(",") if server.strip()], name="acme-ra-cli",
                allow_reconnect=False, connect_timeout=NATS_CONNECT_TIMEOUT_SECONDS, error_cb=_said_below,
                # nats-py retries each server of the first connect up to this many times more,
                # 2 s apart: its default (60) made a command wait 2 minutes for a NATS that is down.
                max_reconnect_attempts=NATS_CONNECT_RETRIES,
                **self.options,
            )
        except Exception as error:  # noqa: BLE001 - any failure means the same to the caller
            raise Unavailable(f"cannot reach NATS at {mask_url(self.url)}: "
                              f"{mask_url(str(error)) or type(error).__name__}") from None

    async def _connect_forever(self) -> None:
        while self.client is None:
            try:
                self.client = await bus.connect(self.url, "acme-ra-admin", self.options)
            except Exception as error:  # noqa: BLE001 - retried
                log.warning("nats: cannot connect to %s: %s; retrying", mask_url(self.url),
                            mask_url(str(error)) or type(error).__name__)
                await asyncio.sleep(2)

    def require(self) -> NATS:
        if not self.url:
            raise Unavailable("ACME_RA_NATS_URL is not set: revocation and queue status need NATS")
        if self.client is None or not self.client.is_connected:
            raise Unavailable(f"NATS at {mask_url(self.url)} is not connected")
        return self.client

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
