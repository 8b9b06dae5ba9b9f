"""``acme-ra upstream persist-record NAME``: the standing dns-persist-01 record the operator
publishes once so that an upstream with ``authz_strategy: dns-persist-01`` validates NAME for
acme-ra's account there (acme_ra_signer/upstream/dns_persist.py; docs/dns-challenges.md).

Run with the signer's settings (ACME_RA_DATABASE_URL, ACME_RA_SECRET_KEY, the upstream's): it
reads the upstream account's URL from the database, registering the account first when the signer
has not yet, and the issuer domain names from the upstream's directory. Prints one zone-file line.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from acme_ra.config import get_settings


def persist_record(
    name: Annotated[str, typer.Argument(help="the domain name; *.NAME or --wildcard: one record for the zone")],
    upstream: Annotated[str | None, typer.Option(help="the upstream (its name in ACME_RA_CONFIG_FILE); "
                                                      "default: the default upstream")] = None,
    wildcard: Annotated[bool, typer.Option("--wildcard", help="add policy=wildcard: the record also covers "
                                                              "every name below NAME and their wildcards")] = False,
    days: Annotated[int | None, typer.Option(min=1, help="add persistUntil, this many days from now")] = None,
    issuer: Annotated[str | None, typer.Option(help="the issuer domain name (default: the upstream's first)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="owner, value and account as JSON")] = False,
) -> None:
    """Print the _validation-persist TXT record that lets the upstream validate NAME by dns-persist-01."""
    from acme_ra_signer.upstream.base import UpstreamError
    from acme_ra_signer.upstream.catalog import UpstreamConfigError
    from acme_ra_signer.upstream.dns_persist import persist_record as work_out

    settings = get_settings()
    try:
        record = asyncio.run(work_out(settings, name, upstream_name=upstream, wildcard=wildcard,
                                      persist_days=days, issuer=issuer))
    except (UpstreamConfigError, UpstreamError) as error:
        typer.echo(f"acme-ra: {error}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"owner": record.owner, "value": record.value, "account": record.account_url}))
    else:
        typer.echo(record.zone_line())


def mount(upstream_app: typer.Typer) -> None:
    upstream_app.command("persist-record")(persist_record)
