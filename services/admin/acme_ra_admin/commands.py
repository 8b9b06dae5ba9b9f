"""The operator commands of ``acme-ra`` (mounted by :mod:`acme_ra_tools.cli`): here what the ACME
clients have (``eab``, ``accounts``, ``orders``, ``certs``); in :mod:`acme_ra_admin.service_commands`
the service itself (``upstream``, ``queues``, ``policy``, ``admin-token``, ``secrets``, ``audit``).

Each command works on the database directly (the same ``ACME_RA_*`` settings as the services),
or, given ``--url`` / ``ACME_RA_ADMIN_URL``, through the admin API with ``--token`` /
``ACME_RA_ADMIN_TOKEN``. Both paths return the same JSON; ``--json`` prints it, otherwise a
table for people.

Exit codes (:mod:`acme_ra_admin.commandline`): 0 done; 1 refused or failed; 2 bad usage or
configuration; 3 not found; 4 not authorized.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from acme_ra_admin.commandline import (
    EXIT_USAGE,
    CommandError,
    Json,
    Limit,
    Token,
    Url,
    call,
    emit_json,
    facts,
    run,
    table,
)

# eab ----------------------------------------------------------------------------------------

eab_app = typer.Typer(help="External Account Binding keys for your ACME clients.", no_args_is_help=True)


@eab_app.command("create")
def eab_create(
    label: Annotated[str, typer.Option(metavar="TEXT", help="who the key is for, e.g. a department")] = "",
    allow: Annotated[list[str] | None, typer.Option("--allow", metavar="RULE", help="identifier rule accounts of this key may "
                     "request: name, .suffix or CIDR (repeat, or comma list)")] = None,
    deny: Annotated[list[str] | None, typer.Option("--deny", metavar="RULE", help="identifier rule refused (repeat, or comma list)")] = None,
    no_wildcards: Annotated[bool, typer.Option("--no-wildcards", help="refuse wildcard names")] = False,
    profile: Annotated[str | None, typer.Option(metavar="NAME", help="ACME profile orders of this key get by default")] = None,
    as_json: Json = False, url: Url = None, token: Token = None,
) -> None:
    """Create an EAB key; its HMAC key is printed this once."""
    from acme_ra_admin.schemas import EabKeyCreate

    def split(values: list[str] | None) -> list[str]:
        return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]

    def body() -> None:
        request = EabKeyCreate(label=label, allow=split(allow), deny=split(deny), wildcards=not no_wildcards,
                               profile=profile)
        key = call(url, token, "POST", "/eab-keys", lambda ops: ops.create_eab_key(request),
                   body=request.model_dump())
        if as_json:
            emit_json(key)
            return
        typer.echo("EAB key created. The HMAC key is shown this once: give it to the key's owner now.")
        facts(key, ["kid", "hmac_key", "label", "profile"])
        if key.get("policy"):
            facts(key["policy"], ["allow", "deny", "wildcards"])
        typer.echo(f"certbot: --eab-kid {key['kid']} --eab-hmac-key {key['hmac_key']}")

    run(body)


@eab_app.command("list")
def eab_list(as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """List EAB keys (never their HMAC keys)."""

    def body() -> None:
        keys = call(url, token, "GET", "/eab-keys", lambda ops: ops.list_eab_keys())
        if as_json:
            emit_json(keys)
            return
        for key in keys:
            policy = key.get("policy") or {}
            parts = ([f"allow {','.join(policy['allow'])}"] if policy.get("allow") else []) + (
                [f"deny {','.join(policy['deny'])}"] if policy.get("deny") else []) + (
                ["no wildcards"] if policy and not policy.get("wildcards", True) else [])
            key["policy_text"] = "; ".join(parts)
        table(keys, [("kid", "KID"), ("label", "LABEL"), ("status", "STATUS"), ("policy_text", "POLICY"),
                     ("profile", "PROFILE"), ("account_id", "ACCOUNT"), ("created_at", "CREATED")])

    run(body)


@eab_app.command("revoke")
def eab_revoke(kid: str, as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """Revoke an EAB key: no new account can bind with it (a bound account stays)."""

    def body() -> None:
        key = call(url, token, "POST", f"/eab-keys/{kid}/revoke", lambda ops: ops.revoke_eab_key(kid))
        emit_json(key) if as_json else typer.echo(f"EAB key {kid} revoked.")

    run(body)


# accounts -----------------------------------------------------------------------------------

accounts_app = typer.Typer(help="ACME accounts of your clients.", no_args_is_help=True)
ACCOUNT_KEYS = ["id", "status", "contact", "eab_kid", "created_at", "orders", "certificates"]


@accounts_app.command("list")
def accounts_list(status: Annotated[str | None, typer.Option(help="valid, deactivated or revoked")] = None,
                  limit: Limit = 100, as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """List accounts, newest first."""

    def body() -> None:
        rows = call(url, token, "GET", "/accounts", lambda ops: ops.list_accounts(status, limit),
                    params={"status": status, "limit": limit})
        emit_json(rows) if as_json else table(rows, [("id", "ID"), ("status", "STATUS"), ("contact", "CONTACT"),
                                                     ("eab_kid", "EAB KID"), ("created_at", "CREATED")])

    run(body)


@accounts_app.command("show")
def accounts_show(account_id: str, as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """One account, with how many orders and certificates it has."""

    def body() -> None:
        row = call(url, token, "GET", f"/accounts/{account_id}", lambda ops: ops.get_account(account_id))
        emit_json(row) if as_json else facts(row, ACCOUNT_KEYS)

    run(body)


@accounts_app.command("deactivate")
def accounts_deactivate(account_id: str, as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """Deactivate an account for good (status `revoked`); its pending orders become invalid."""

    def body() -> None:
        row = call(url, token, "POST", f"/accounts/{account_id}/deactivate",
                   lambda ops: ops.deactivate_account(account_id))
        emit_json(row) if as_json else typer.echo(f"Account {account_id} deactivated (status {row['status']}).")

    run(body)


# orders -------------------------------------------------------------------------------------

orders_app = typer.Typer(help="Orders: status, authorizations, errors, trace ids.", no_args_is_help=True)


@orders_app.command("list")
def orders_list(status: Annotated[str | None, typer.Option(help="pending, ready, processing, valid or invalid")] = None,
                account: Annotated[str | None, typer.Option(help="only this account's orders")] = None,
                limit: Limit = 100, as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """List orders, newest first."""

    def body() -> None:
        rows = call(url, token, "GET", "/orders", lambda ops: ops.list_orders(status, account, limit),
                    params={"status": status, "account": account, "limit": limit})
        emit_json(rows) if as_json else table(rows, [
            ("id", "ID"), ("status", "STATUS"), ("names", "NAMES"), ("account_id", "ACCOUNT"),
            ("created_at", "CREATED"), ("error", "ERROR"), ("trace_id", "TRACE ID")])

    run(body)


@orders_app.command("show")
def orders_show(order_id: str, as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """One order with its authorizations, challenges, errors, upstream order and trace id."""

    def body() -> None:
        row = call(url, token, "GET", f"/orders/{order_id}", lambda ops: ops.get_order(order_id))
        if as_json:
            emit_json(row)
            return
        facts(row, ["id", "status", "names", "account_id", "provisioner", "profile", "created_at", "updated_at",
                    "expires", "error", "certificate_id", "trace_id", "trace_url"])
        if row.get("upstream"):
            up = row["upstream"]
            typer.echo(f"upstream order  {up['upstream']}: {up['state']} {up.get('url') or ''}".rstrip())
            if up.get("error"):
                typer.echo(f"upstream error  {up['error'].get('type')}: {up['error'].get('detail')}")
        typer.echo("")
        table([{**a, "challenges": [f"{c['type']} {c['status']}" + (f" ({c['error'].get('type')}: "
                                    f"{c['error'].get('detail')})" if c.get("error") else "")
                                    for c in a["challenges"]]}
               for a in row["authorizations"]],
              [("identifier", "AUTHORIZATION"), ("status", "STATUS"), ("expires", "EXPIRES"),
               ("challenges", "CHALLENGES")])

    run(body)


# certs --------------------------------------------------------------------------------------

certs_app = typer.Typer(help="Issued certificates; revocation goes to the upstream CA.", no_args_is_help=True)
CERT_COLUMNS = [("id", "ID"), ("serial", "SERIAL"), ("names", "NAMES"), ("status", "STATUS"),
                ("not_after", "EXPIRES"), ("upstream", "UPSTREAM"), ("account_id", "ACCOUNT"), ("order_id", "ORDER")]


@certs_app.command("list")
def certs_list(account: Annotated[str | None, typer.Option(help="only this account's certificates")] = None,
               revoked: Annotated[bool | None, typer.Option("--revoked/--not-revoked",
                                                           help="only revoked / only not revoked")] = None,
               expiring: Annotated[str | None, typer.Option(
                   metavar="DURATION", help="not yet expired, expiring within DURATION (12h, 30d, 2w); soonest first")] = None,
               upstream: Annotated[str | None, typer.Option(help="issued through this upstream (lab: the lab CA)")] = None,
               profile: Annotated[str | None, typer.Option(help="issued under this profile")] = None,
               issuer: Annotated[str | None, typer.Option(help="the issuer's name contains this (any case)")] = None,
               eab_kid: Annotated[str | None, typer.Option("--eab-kid", help="the account registered with this EAB key")] = None,
               unreplaced: Annotated[bool, typer.Option(
                   "--unreplaced", help="only those no later certificate for the same names replaced")] = False,
               limit: Limit = 100, as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """List certificates, newest first (soonest expiry first with --expiring)."""
    from acme_ra.db import inventory

    def body() -> None:
        try:
            within = inventory.parse_duration(expiring) if expiring else None
        except ValueError as error:
            raise CommandError(f"--expiring: {error}", EXIT_USAGE) from None
        wanted = inventory.CertificateFilter(expiring_within=within, upstream=upstream, profile=profile, issuer=issuer,
                                             eab_kid=eab_kid, unreplaced=unreplaced)
        rows = call(url, token, "GET", "/certificates",
                    lambda ops: ops.list_certificates(account, revoked, limit, 0, wanted),
                    params={"account": account, "revoked": None if revoked is None else str(revoked).lower(),
                            "limit": limit, "expiring": expiring, "upstream": upstream, "profile": profile,
                            "issuer": issuer, "eab_kid": eab_kid, "unreplaced": "true" if unreplaced else None})
        emit_json(rows) if as_json else table(rows, CERT_COLUMNS)

    run(body)


@certs_app.command("show")
def certs_show(certificate: Annotated[str, typer.Argument(help="certificate id or serial (hex)")],
               pem: Annotated[bool, typer.Option("--pem", help="print the PEM chain only")] = False,
               as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """One certificate (by id or serial)."""

    def body() -> None:
        row = call(url, token, "GET", f"/certificates/{certificate}", lambda ops: ops.get_certificate(certificate))
        if pem:
            typer.echo(row["chain_pem"].rstrip("\n"))
        elif as_json:
            emit_json(row)
        else:
            facts(row, ["id", "serial", "names", "status", "not_before", "not_after", "revoked_at",
                        "revocation_reason", "account_id", "order_id", "created_at"])

    run(body)


@certs_app.command("revoke")
def certs_revoke(certificate: Annotated[str, typer.Argument(help="certificate id or serial (hex)")],
                 reason: Annotated[str, typer.Option(help="RFC 5280 reason: unspecified, keyCompromise, "
                                   "affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn "
                                   "(or its number)")] = "unspecified",
                 as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """Revoke a certificate at the upstream CA (through the signer, over NATS)."""

    def body() -> None:
        result = call(url, token, "POST", f"/certificates/{certificate}/revoke",
                      lambda ops: _revoke(ops, certificate, reason), body={"reason": reason})
        if as_json:
            emit_json(result)
        else:
            cert = result["certificate"]
            typer.echo(f"Certificate {cert['serial']} revoked (reason {cert['revocation_reason']}).")

    run(body)


async def _revoke(ops: Any, certificate: str, reason: str) -> Any:
    from acme_ra_admin.operations import reason_code

    reason_code(reason)  # a bad reason or an unknown certificate: say so before asking for NATS
    await ops.get_certificate(certificate)
    await ops.nats.connect_once()
    return await ops.revoke_certificate(certificate, reason)


def register(app: typer.Typer) -> None:
    """Mount the operator commands on the ``acme-ra`` app."""
    from acme_ra_admin import service_commands

    app.add_typer(eab_app, name="eab")
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(orders_app, name="orders")
    from acme_ra_admin import renewals

    renewals.register(certs_app)  # certs renew-early, certs switch-progress
    app.add_typer(certs_app, name="certs")
    service_commands.register(app)
