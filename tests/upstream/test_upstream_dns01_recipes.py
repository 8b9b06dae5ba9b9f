"""docs/upstream.md's CNAME-delegation recipes, run as written: the hosts' zone ``example.org``
holds ``_acme-challenge.www`` as a CNAME into ``validation.example``, the one zone acme-ra's TSIG
key may update. With BIND (the page's ``named.conf`` and environment settings) and with Knot DNS
(the page's key command, ``knot.conf``, zone file and per-upstream config file), the signer gets a
certificate for a name and its wildcard from a Pebble that validates for real, and no record is
left. The snippets are read from the page (tests/support/doc_recipes.py): change the page and
this test runs the change.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update
import yaml

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.migrate import upgrade
from acme_ra_signer.worker import IssueWorker
from tests.support.bind import Bind, Zone
from tests.support.doc_recipes import exports, recipe, substituted
from tests.support.knot import Knot, free_port

from .conftest import acme_settings, certificate_of, make_acme_driver, new_order, order_row, run_job, upstream_order_row
from .pebble import Pebble, require_pebble
from .test_upstream_dns01 import san

PAGE = "upstream.md"
NAMES = ["www.example.org", "*.www.example.org"]


def hosts_zone() -> Zone:
    """example.org as the page has it: no updates from acme-ra, the host's CNAME."""
    return Zone("example.org", updatable=False, records=[recipe(PAGE, "hosts-zone").strip()])


@asynccontextmanager
async def database(url: str) -> AsyncIterator[Database]:
    await asyncio.to_thread(upgrade, url)  # migrations run their own event loop
    db = Database(url)
    try:
        yield db
    finally:
        await db.dispose()


async def issue(settings: Settings, names: list[str]) -> tuple[Any, Any, set[str]]:
    """One order through the signer's worker: (order row, upstream order row, certificate SANs)."""
    async with database(settings.effective_database_url) as db:
        driver = make_acme_driver(settings, db)
        try:
            order_id = await new_order(db, names)
            await run_job(IssueWorker(db, driver), order_id)
        finally:
            await driver.close()
        order = await order_row(db, order_id)
        record = await upstream_order_row(db, order_id)
        sans = san((await certificate_of(db, order_id)).chain_pem) if order.status == "valid" else set()
        return order, record, sans


def update_rcode(address: str, zone: str, key_name: str, secret: str, rdtype: str, value: str) -> str:
    """What the server answers an update signed with the key: add ``probe.<zone>``."""
    host, port = address.rsplit(":", 1)
    keyring = dns.tsigkeyring.from_text({key_name: ("hmac-sha256", secret)})
    update = dns.update.UpdateMessage(zone, keyring=keyring, keyname=dns.name.from_text(key_name),
                                      keyalgorithm="hmac-sha256")
    update.add(f"probe.{zone}.", 60, rdtype, value)
    try:
        answer = dns.query.tcp(update, host, port=int(port), timeout=5)
    except dns.tsig.PeerBadKey:  # Knot refuses what the ACL denies this way
        return "NOTAUTH"
    return dns.rcode.to_text(answer.rcode())


async def test_bind_recipe_delegates_to_the_validation_zone_only(tmp_path: Path, fresh_database_url: str) -> None:
    require_pebble()
    workdir = tmp_path / "bind"
    named_conf = substituted(recipe(PAGE, "bind-named-conf"), {"/etc/bind/acme-ra.key": str(workdir / "tsig.key")})
    bind = Bind(workdir, [hosts_zone(), Zone("validation.example")], zone_statements=named_conf)
    try:
        pebble = Pebble(tmp_path / "pebble", dns_server=bind.resolver_address)
        try:
            env = exports(substituted(recipe(PAGE, "dns01-env"), {
                "192.0.2.53:53": bind.address,
                "/etc/acme-ra/tsig.secret": str(bind.secret_file),
            }))
            base = acme_settings(tmp_path, pebble, fresh_database_url)
            fields = {name.removeprefix("ACME_RA_").lower(): value for name, value in env.items()}
            settings = Settings(**{**base.model_dump(), **fields})
            order, record, sans = await issue(settings, NAMES)
            issued = pebble.issued_count()
        finally:
            pebble.stop()
        assert order.status == "valid", order.error
        assert sans == set(NAMES)
        assert record is not None and record.orders_created == 1 and record.dns_records is None
        assert issued == 1
        log = bind.log_path.read_text()
        assert log.count("adding an RR at 'www.validation.example' TXT") == 2  # name and wildcard: two values
        assert bind.all_txt() == {}, "a TXT record was left in the zone"
        # The point of the recipe: the key writes TXT in the validation zone, and nothing else.
        assert update_rcode(bind.address, "example.org", bind.key_name, bind.secret, "TXT", '"x"') == "REFUSED"
        assert update_rcode(bind.address, "validation.example", bind.key_name, bind.secret, "A", "192.0.2.1") \
            == "REFUSED"
    finally:
        bind.stop()


def make_knot_key(kdir: Path) -> str:
    """The page's knot-key commands, in ``kdir`` in place of /etc; the secret."""
    paths = {"/etc/knot/": f"{kdir}/", "/etc/acme-ra/tsig.secret": str(kdir / "tsig.secret")}
    made = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", substituted(recipe(PAGE, "knot-key"), paths)],
        capture_output=True, text=True, check=False,
    )
    assert made.returncode == 0, made.stderr
    return (kdir / "tsig.secret").read_text().strip()


async def test_knot_recipe_issues_through_knot(tmp_path: Path, fresh_database_url: str) -> None:
    require_pebble()
    kdir = tmp_path / "knot"
    kdir.mkdir()
    secret = make_knot_key(kdir)
    port = free_port()
    conf = substituted(recipe(PAGE, "knot-conf"), {
        "192.0.2.54@53": f"127.0.0.1@{port}", "/run/knot": str(kdir), "/var/lib/knot": str(kdir), "/etc/knot/": f"{kdir}/",
    })
    validation_zone = substituted(recipe(PAGE, "validation-zone"), {"192.0.2.54": "127.0.0.1"})
    hosts = "\n".join([
        "$ORIGIN example.org.", "$TTL 60", "@ IN SOA ns1 hostmaster 1 60 60 3600 0", "@ IN NS ns1",
        "ns1 IN A 127.0.0.1", "* IN A 127.0.0.1", recipe(PAGE, "hosts-zone"),
    ])
    zones = {"validation.example.zone": validation_zone, "example.org.zone": hosts}
    knot = Knot(kdir, conf, zones, port, "validation.example")
    try:
        # The CA's resolver (Pebble's): a BIND forwarding both zones to Knot, following the CNAME.
        forwards = {"example.org": knot.address, "validation.example": knot.address}
        bind = Bind(tmp_path / "bind", [Zone("resolver.test")], forwards=forwards)
        try:
            pebble = Pebble(tmp_path / "pebble", dns_server=bind.resolver_address)
            try:
                config = yaml.safe_load(substituted(recipe(PAGE, "dns01-config-file"), {
                    "192.0.2.54:53": knot.address,
                    "/etc/acme-ra/tsig.secret": str(kdir / "tsig.secret"),
                }))
                hmac_file = tmp_path / "certinext-hmac"
                hmac_file.write_text(pebble.eab_hmac_key)
                # The CA: Pebble in place of CERTInext; everything DNS is the page's.
                config["upstreams"]["certinext"].update(
                    directory_url=pebble.directory_url, eab_kid=pebble.eab_kid,
                    eab_hmac_key_file=str(hmac_file), ca_bundle=str(pebble.ca_bundle),
                )
                config_file = tmp_path / "acme-ra.yaml"
                config_file.write_text(yaml.safe_dump(config))
                settings = acme_settings(
                    tmp_path, pebble, fresh_database_url, config_file=config_file,
                    upstream_directory_url="", upstream_eab_kid="", upstream_eab_hmac_key=None,
                )
                order, record, sans = await issue(settings, NAMES)
                issued = pebble.issued_count()
            finally:
                pebble.stop()
        finally:
            bind.stop()
        assert order.status == "valid", order.error
        assert sans == set(NAMES)
        assert record is not None and record.upstream == "certinext" and record.orders_created == 1
        assert record.dns_records is None
        assert issued == 1
        assert knot.updates() == 2, knot.log_path.read_text()[-2000:]  # one update adds both values, one removes
        assert knot.txt("www.validation.example") == set(), "a TXT record was left in the zone"
        # The ACL lets the key write TXT records only.
        assert update_rcode(knot.address, "validation.example", "acme-ra", secret, "A", "192.0.2.1") != "NOERROR"
        assert update_rcode(knot.address, "example.org", "acme-ra", secret, "TXT", '"x"') != "NOERROR"
    finally:
        knot.stop()
