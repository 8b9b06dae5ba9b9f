"""The operator commands about the service itself (mounted with :mod:`acme_ra_admin.commands`):
``upstream``, ``queues``, ``policy`` and ``secrets`` (``admin-token`` and ``audit``:
:mod:`acme_ra_admin.access_commands`)."""

from __future__ import annotations

from typing import Any

import typer

from acme_ra_admin.commandline import (
    EXIT_USAGE,
    CommandError,
    Json,
    Token,
    Url,
    call,
    emit_json,
    facts,
    on_database,
    run,
    table,
)

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


# secrets at rest ----------------------------------------------------------------------------

secrets_app = typer.Typer(help="Secrets sealed at rest with ACME_RA_SECRET_KEY (on the database only).",
                          no_args_is_help=True)


@secrets_app.command("reseal")
def secrets_reseal(as_json: Json = False) -> None:
    """Seal every secret at rest (EAB HMAC keys, upstream account keys) again in today's format,
    a key per purpose; values sealed by an older release open either way. Safe to run again."""

    def body() -> None:
        report = on_database(lambda ops: ops.reseal_secrets())
        if as_json:
            emit_json(report)
        else:
            typer.echo(f"{report['resealed']} secrets resealed, {report['current']} already current.")

    run(body)


def register(app: typer.Typer) -> None:
    from acme_ra_admin import access_commands

    app.add_typer(upstream_app, name="upstream")
    app.add_typer(queues_app, name="queues")
    app.add_typer(policy_app, name="policy")
    app.add_typer(secrets_app, name="secrets")
    access_commands.register(app)
