"""The operator commands of ``acme-ra`` (mounted by :mod:`acme_ra_tools.cli`): ``eab``, ``accounts``,
``orders``, ``certs``, ``upstream``, ``queues``, ``policy``, ``admin-token`` and ``secrets``.

Each command works on the database directly (the same ``ACME_RA_*`` settings as the services),
or, given ``--url`` / ``ACME_RA_ADMIN_URL``, through the admin API with ``--token`` /
``ACME_RA_ADMIN_TOKEN``. Both paths return the same JSON; ``--json`` prints it, otherwise a
table for people.

Exit codes: 0 done; 1 refused or failed (conflict, upstream refused or unreachable, not ready);
2 bad usage or configuration; 3 not found; 4 not authorized (the admin API refused the token).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

import typer

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAUTHORIZED = 4

# How long one admin API call may take (seconds): a revocation waits for the upstream CA.
API_TIMEOUT_SECONDS = 45.0

Url = Annotated[str | None, typer.Option("--url", metavar="URL", help="admin API base URL (default: ACME_RA_ADMIN_URL; "
                                         "unset: work on the database directly)", show_default=False)]
Token = Annotated[str | None, typer.Option("--token", metavar="TOKEN", help="admin API bearer token (default: ACME_RA_ADMIN_TOKEN)",
                                           show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
Limit = Annotated[int, typer.Option("--limit", metavar="N", min=1, max=1000, help="rows to show")]


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _settings() -> Any:
    from acme_ra.config import get_settings

    return get_settings()  # one line and exit 2 on bad configuration


def call(url: str | None, token: str | None, method: str, path: str,
         direct: Callable[[Any], Awaitable[Any]], body: dict[str, Any] | None = None,
         params: dict[str, Any] | None = None) -> Any:
    """Run one operation remotely (``method path`` on the admin API) or directly
    (``direct(AdminOperations)``); the JSON-shaped result, or :class:`CommandError`."""
    settings = _settings()
    url = url or settings.admin_url
    if url:
        token = token or (settings.admin_token.get_secret_value() if settings.admin_token else "")
        return _remote(url.rstrip("/"), token or "", method, path, body, params)
    return asyncio.run(_direct(settings, direct))


def _remote(url: str, token: str, method: str, path: str, body: dict[str, Any] | None,
            params: dict[str, Any] | None) -> Any:
    import httpx

    if not token:
        raise CommandError("the admin API needs a token: --token or ACME_RA_ADMIN_TOKEN", EXIT_USAGE)
    query = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        response = httpx.request(method, f"{url}/api{path}", json=body, params=query, timeout=API_TIMEOUT_SECONDS,
                                 headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as error:
        from acme_ra.redaction import mask_url

        raise CommandError(f"cannot reach the admin API at {mask_url(url)}: "
                           f"{mask_url(str(error)) or type(error).__name__}") from None
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if not isinstance(detail, str):
        detail = json.dumps(detail) if detail else f"HTTP {response.status_code}"
    code = {401: EXIT_UNAUTHORIZED, 403: EXIT_UNAUTHORIZED, 404: EXIT_NOT_FOUND, 400: EXIT_USAGE,
            422: EXIT_USAGE}.get(response.status_code, EXIT_FAILED)
    raise CommandError(detail, code)


async def _direct(settings: Any, direct: Callable[[Any], Awaitable[Any]]) -> Any:
    from acme_ra_admin.operations import AdminOperations, NotFound, OperationError

    ops = AdminOperations.from_settings(settings, pool_size=1)
    try:
        result = await direct(ops)
    except NotFound as error:
        raise CommandError(error.detail, EXIT_NOT_FOUND) from None
    except OperationError as error:
        raise CommandError(error.detail, EXIT_USAGE if error.status == 400 else EXIT_FAILED) from None
    except Exception as error:
        from sqlalchemy.exc import SQLAlchemyError

        from acme_ra.redaction import mask_url

        kind = settings.effective_database_url.split('://')[0]
        if isinstance(error, SQLAlchemyError):
            raise CommandError(f"database error ({kind}): "
                               f"{mask_url(str(error).splitlines()[0])}; did you run `acme-ra db migrate`?") from None
        if isinstance(error, OSError):  # asyncpg's refused or timed-out connect: one line, no trace
            raise CommandError(f"cannot reach the database ({kind}): "
                               f"{mask_url(str(error)) or type(error).__name__}") from None
        raise
    finally:
        await ops.close()
    return _jsonable(result)


def _jsonable(result: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [_jsonable(item) for item in result]
    return result


def run(command: Callable[[], None]) -> None:
    """Run a command body, turning :class:`CommandError` into a message and an exit code."""
    try:
        command()
    except CommandError as error:
        typer.echo(f"acme-ra: {error}", err=True)
        raise typer.Exit(error.code) from None


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=False))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Aligned columns (``(key, heading)``); lists are comma-joined, None is empty."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        if isinstance(value, dict):
            return f"{value.get('type', '')}: {value.get('detail', '')}" if "type" in value else json.dumps(value)
        return str(value).replace("T", " ", 1).removesuffix("Z") if _is_time(value) else str(value)

    text = [[heading for _, heading in columns]] + [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in text) for i in range(len(columns))]
    for line in text:
        typer.echo("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip())
    if not rows:
        typer.echo("(none)")


def facts(row: dict[str, Any], keys: Sequence[str]) -> None:
    width = max(len(k) for k in keys)
    for key in keys:
        value = row.get(key)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value)
        typer.echo(f"{key.ljust(width)}  {'' if value is None else value}")


def _is_time(value: Any) -> bool:
    return isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T"


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


# upstream and queues ------------------------------------------------------------------------

upstream_app = typer.Typer(help="The upstream CA as the signer sees it.", no_args_is_help=True)


def _echo_upstream(upstream: dict[str, Any]) -> None:
    typer.echo("")
    typer.echo(f"upstream {upstream['name']}")
    strategy = upstream["authz_strategy"] or "unknown (the signer did not say)"
    dns = upstream["dns_update"]
    if dns:
        where = f"rfc2136 {dns['server']} (TSIG key {dns['tsig_key_name']})" if dns["kind"] == "rfc2136" \
            else f"hook {dns['path']}"
        strategy += f", {where}"
    typer.echo(f"  strategy      {strategy}")
    breaker = upstream.get("breaker")
    if breaker:
        line = f"  breaker       {breaker['state']}"
        if breaker["state"] != "closed":
            line += f" after {breaker['consecutive_failures']} failure(s)"
            if breaker.get("retry_in_seconds"):
                line += f", next probe in {breaker['retry_in_seconds']:g}s"
            line += f": {breaker.get('last_error') or ''}"
        typer.echo(line)
    pending = f"  validating    {upstream['validations_pending']} upstream order(s)"
    if upstream["dns_records"]:
        pending += f", {upstream['dns_records']} TXT record(s) published"
    typer.echo(pending)
    failure = upstream["last_failure"]
    if failure:
        at = str(failure["at"]).replace("T", " ", 1).removesuffix("Z")
        typer.echo(f"  last failure  {at} order {failure['order_id']}: "
                   f"{failure['type'] or '?'}: {failure['detail'] or ''}")


@upstream_app.command("status")
def upstream_status(as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """The signer's readiness (it asks the upstream CA), upstream accounts and order counts; per
    upstream its authz_strategy, validations pending and last failure. Exit status 1 when the signer is not ready."""

    def body() -> None:
        status = call(url, token, "GET", "/upstream", lambda ops: ops.upstream_status())
        signer = status["signer"]
        if as_json:
            emit_json(status)
        else:
            state = "ready" if signer["ready"] else ("not ready" if signer["reachable"] else "unreachable")
            typer.echo(f"upstream  {status['upstream']}")
            typer.echo(f"signer    {state} ({signer['url']})")
            for what, why in signer["failed"].items():
                typer.echo(f"  {what}: {why}")
            typer.echo("orders    " + (", ".join(f"{k} {v}" for k, v in status["orders"].items()) or "none"))
            if status["upstream_orders"]:
                typer.echo("upstream orders  " + ", ".join(f"{k} {v}" for k, v in status["upstream_orders"].items()))
            for upstream in status["upstreams"]:
                _echo_upstream(upstream)
            if status["accounts"]:
                typer.echo("")
                table(status["accounts"], [("upstream", "UPSTREAM"), ("directory_url", "DIRECTORY"),
                                           ("url", "ACCOUNT URL"), ("registrations", "REGISTRATIONS")])
        if not signer["ready"]:
            raise CommandError("the signer is not ready" if signer["reachable"] else "the signer cannot be reached")

    run(body)


queues_app = typer.Typer(help="The JetStream job backlog.", no_args_is_help=True)


@queues_app.command("status")
def queues_status(as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """Jobs waiting for the validators and signers. Exit status 1 when NATS cannot be asked."""

    def body() -> None:
        status = call(url, token, "GET", "/queues", lambda ops: _queue_status(ops))
        if as_json:
            emit_json(status)
        else:
            table(status["consumers"], [("name", "CONSUMER"), ("pending", "PENDING"),
                                        ("ack_pending", "ACK PENDING"), ("redelivered", "REDELIVERED")])
        if status.get("error"):
            raise CommandError(status["error"])

    run(body)


async def _queue_status(ops: Any) -> Any:
    from acme_ra_admin.operations import Unavailable

    try:
        await ops.nats.connect_once()
    except Unavailable:
        pass  # queue_status reports it
    return await ops.queue_status()


# policy -------------------------------------------------------------------------------------

policy_app = typer.Typer(help="The identifier policy and the client networks.", no_args_is_help=True)


@policy_app.command("show")
def policy_show(as_json: Json = False, url: Url = None, token: Token = None) -> None:
    """The identifier policy and the client networks (who may use the ACME API, and what each may
    order), as the configuration says now: ACME_RA_POLICY_* and ACME_RA_CONFIG_FILE, which the
    frontends reload within seconds of a change. Exit status 2 when the file does not load
    (the frontends then keep the rules they loaded before)."""

    def body() -> None:
        policy = call(url, token, "GET", "/policy", lambda ops: ops.policy())
        identifiers, networks = policy["identifiers"], policy["client_networks"]
        if as_json:
            emit_json(policy)
        else:
            facts({"allow": identifiers["allow"] or "any name", "deny": identifiers["deny"] or "none",
                   "wildcards": "allowed" if identifiers["wildcards"] else "refused",
                   "client networks": {True: "only the networks below may use the ACME API",
                                       False: "none configured: every address may use the ACME API",
                                       None: "unknown: the file does not load"}[networks["restricted"]],
                   "config file": networks["config_file"] or "(none)"},
                  ["allow", "deny", "wildcards", "client networks", "config file"])
            if networks["networks"]:
                typer.echo("")
                rows = [{**n, "allow": n["allow"] or "any name the policy allows",
                         "wildcards": "yes" if n["wildcards"] else "no"} for n in networks["networks"]]
                table(rows, [("network", "NETWORK"), ("allow", "MAY REQUEST"), ("deny", "DENIED"),
                             ("wildcards", "WILDCARDS"), ("origin", "FROM")])
        if networks["error"]:
            raise CommandError(f"{networks['error']} (the frontends keep the rules they loaded before)", EXIT_USAGE)

    run(body)


# admin tokens -------------------------------------------------------------------------------

tokens_app = typer.Typer(help="Bearer tokens of the admin API and console (on the database only).",
                         no_args_is_help=True)


@tokens_app.command("create")
def token_create(label: Annotated[str, typer.Option(help="whose token it is")] = "", as_json: Json = False) -> None:
    """Create an admin token; it is printed this once."""

    def body() -> None:
        row = asyncio.run(_direct(_settings(), lambda ops: ops.create_admin_token(label)))
        if as_json:
            emit_json(row)
        else:
            typer.echo(row["token"])
            typer.echo(f"(admin token {row['id']}: shown this once; store it now)", err=True)

    run(body)


@tokens_app.command("list")
def token_list(as_json: Json = False) -> None:
    """List admin tokens (never the tokens themselves)."""

    def body() -> None:
        rows = asyncio.run(_direct(_settings(), lambda ops: ops.list_admin_tokens()))
        emit_json(rows) if as_json else table(rows, [("id", "ID"), ("label", "LABEL"), ("created_at", "CREATED"),
                                                     ("last_used_at", "LAST USED"), ("revoked_at", "REVOKED")])

    run(body)


@tokens_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke an admin token: its API calls and console sessions stop working at once."""

    def body() -> None:
        asyncio.run(_direct(_settings(), lambda ops: ops.revoke_admin_token(token_id)))
        typer.echo(f"Admin token {token_id} revoked.")

    run(body)


# secrets at rest ----------------------------------------------------------------------------

secrets_app = typer.Typer(help="Secrets sealed at rest with ACME_RA_SECRET_KEY (on the database only).",
                          no_args_is_help=True)


@secrets_app.command("reseal")
def secrets_reseal(as_json: Json = False) -> None:
    """Seal every secret at rest (EAB HMAC keys, upstream account keys) again in today's format,
    a key per purpose; values sealed by an older release open either way. Safe to run again."""

    def body() -> None:
        report = asyncio.run(_direct(_settings(), lambda ops: ops.reseal_secrets()))
        if as_json:
            emit_json(report)
        else:
            typer.echo(f"{report['resealed']} secrets resealed, {report['current']} already current.")

    run(body)


def register(app: typer.Typer) -> None:
    """Mount the operator commands on the ``acme-ra`` app."""
    app.add_typer(eab_app, name="eab")
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(orders_app, name="orders")
    from acme_ra_admin import renewals

    renewals.register(certs_app)  # certs renew-early, certs switch-progress
    app.add_typer(certs_app, name="certs")
    app.add_typer(upstream_app, name="upstream")
    app.add_typer(queues_app, name="queues")
    app.add_typer(tokens_app, name="admin-token")
    app.add_typer(policy_app, name="policy")
    app.add_typer(secrets_app, name="secrets")
