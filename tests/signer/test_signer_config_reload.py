"""The upstream lists follow ACME_RA_CONFIG_FILE without a restart (config_watch.ConfigWatch,
AcmeDriver.reload): unchanged upstreams keep their driver and breaker, new and changed ones get
new ones, removed ones serve only what is journaled there, and a broken file changes nothing.
(The whole walkthrough with two Pebbles and certbot: tests/upstream/test_upstream_ca_switch.py.)"""

from __future__ import annotations

from pathlib import Path

from acme_ra.db.engine import Database
from acme_ra_signer.config_watch import CONFIG_VALID, ConfigWatch
from acme_ra_signer.upstream.failover import AcmeDriver

from .test_signer_upstream_catalog import settings

BEFORE = """
upstreams:
  old-ca: {directory_url: "https://old.test/dir"}
  spare: {directory_url: "https://spare.test/dir"}
default_upstream: old-ca
profiles:
  tlsserver: {upstreams: [old-ca, spare]}
"""
AFTER = """
upstreams:
  old-ca: {directory_url: "https://old.test/dir"}
  new-ca: {directory_url: "https://new.test/dir"}
default_upstream: new-ca
profiles:
  tlsserver: {upstreams: [new-ca]}
"""


async def test_a_changed_file_is_served_from_the_next_order(tmp_path: Path, db: Database) -> None:
    config = tmp_path / "acme-ra.yaml"
    config.write_text(BEFORE)
    configured = settings(tmp_path, config_file=config, secret_key="a-test-sealing-secret-of-some-length")
    driver = AcmeDriver.from_settings(configured, db)
    watch = ConfigWatch(configured, driver)
    try:
        old_driver, spare = driver.upstreams["old-ca"], driver.upstreams["spare"]
        old_breaker = driver.breakers["old-ca"]
        assert driver.catalog.candidates(None, "tlsserver") == ("old-ca", "spare")
        assert not await watch.reload_if_changed()  # nothing changed

        config.write_text("upstreams: [not a mapping\n")
        assert not await watch.reload_if_changed()
        assert CONFIG_VALID._value.get() == 0
        assert driver.catalog.candidates(None, "tlsserver") == ("old-ca", "spare")  # in force still

        config.write_text(AFTER)
        assert await watch.reload_if_changed()
        assert CONFIG_VALID._value.get() == 1
        assert driver.catalog.candidates(None, "tlsserver") == ("new-ca",)
        assert driver.catalog.default == "new-ca"
        assert driver.upstreams["old-ca"] is old_driver and driver.breakers["old-ca"] is old_breaker
        assert "new-ca" in driver.upstreams and "spare" not in driver.upstreams
        assert driver.retired["spare"] is spare and driver._named("spare") is spare  # journaled orders
        assert [entry["name"] for entry in driver.describe()] == ["old-ca", "new-ca"]

        config.write_text(AFTER.replace("https://old.test/dir", "https://old.test/v2"))
        assert await watch.reload_if_changed()
        assert driver.upstreams["old-ca"] is not old_driver  # its configuration changed
        assert driver.breakers["old-ca"] is not old_breaker
    finally:
        await driver.close()
