"""Reload the frontend's TLS certificate when its files change (the signer renews it in place).

``SSLContext.load_cert_chain`` on the live context applies to every new handshake; connections
already open keep the certificate they negotiated.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("acme_ra.frontend.tls")

# How often the certificate files are looked at (seconds).
TLS_WATCH_INTERVAL = 30


@dataclass
class TlsWatch:
    context: ssl.SSLContext | None
    cert: Path
    key: Path
    seen: tuple[float, float] = field(default=(0.0, 0.0))

    def __post_init__(self) -> None:
        self.seen = self._mtimes()

    def _mtimes(self) -> tuple[float, float]:
        try:
            return self.cert.stat().st_mtime, self.key.stat().st_mtime
        except OSError:
            return self.seen

    def reload_if_changed(self) -> bool:
        current = self._mtimes()
        if current == self.seen or self.context is None:
            return False
        try:
            self.context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as error:  # a half-written pair: try again next time
            log.warning("TLS certificate not reloaded yet: %s", error)
            return False
        self.seen = current
        log.info("TLS certificate reloaded", extra={"cert": str(self.cert)})
        return True

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(TLS_WATCH_INTERVAL)
            self.reload_if_changed()
