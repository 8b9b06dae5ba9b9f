"""The upstream lists follow ACME_RA_CONFIG_FILE without a restart: a CA switch is an edit of the
file (docs/upstream.md, "Switching CA").

The signer looks at the file every ``WATCH_INTERVAL_SECONDS`` (a ConfigMap's symlink swap
included) and at once on SIGHUP (``systemctl reload acme-ra-signer``); when it changed and loads,
``AcmeDriver.reload`` serves it from the next order on. A file that does not load changes nothing:
one line in the log says why, the lists in force stay, and ``acme_ra_signer_config_valid`` is 0
until a good file comes. Orders already at an upstream resume there (their journal names it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from prometheus_client import Gauge

from acme_ra.client_networks import file_signature
from acme_ra.config import Settings
from acme_ra_signer.upstream.catalog import UpstreamConfigError, load_catalog
from acme_ra_signer.upstream.failover import AcmeDriver

log = logging.getLogger("acme_ra_signer.config_watch")

# How often the file is looked at (seconds); SIGHUP does not wait for it.
WATCH_INTERVAL_SECONDS = 5.0

CONFIG_VALID = Gauge("acme_ra_signer_config_valid",
                     "1 while the last look at ACME_RA_CONFIG_FILE loaded (or it never changed), else 0 "
                     "(the upstream lists in force stay)")
CONFIG_VALID.set(1)


class ConfigWatch:
    """Reloads ``driver``'s upstream lists when ``settings.config_file`` changes."""

    def __init__(self, settings: Settings, driver: AcmeDriver) -> None:
        self.settings = settings
        self.driver = driver
        self.signature = file_signature(settings.config_file)
        self.wake = asyncio.Event()

    async def reload_if_changed(self) -> bool:
        """Load the file again if it changed; True when the driver now serves the new lists."""
        signature = file_signature(self.settings.config_file)
        if signature == self.signature:
            return False
        self.signature = signature  # taken before the read: a change during it is seen next time
        try:
            catalog = await asyncio.to_thread(load_catalog, self.settings)
        except UpstreamConfigError as error:
            CONFIG_VALID.set(0)
            log.error("upstreams not reloaded, the lists in force stay: %s", str(error).removeprefix("acme-ra: "))
            return False
        changes = self.driver.reload(catalog)
        CONFIG_VALID.set(1)
        log.info("upstreams reloaded from %s: %s", self.settings.config_file, "; ".join(changes) or "no change",
                 extra={"changes": changes})
        return True

    async def run_forever(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
            loop.add_signal_handler(signal.SIGHUP, self.wake.set)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), WATCH_INTERVAL_SECONDS)
                self.wake.clear()
                try:
                    await self.reload_if_changed()
                except Exception:  # the watch must outlive any surprise
                    log.exception("upstreams: reload failed")
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
