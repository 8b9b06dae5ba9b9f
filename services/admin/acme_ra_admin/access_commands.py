"""The operator commands about who may use the admin plane and what they did: ``admin-token``
(on the database only) and ``audit``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

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
    on_database,
    run,
    table,
)

# admin tokens -------------------------------------------------------------------------------

tokens_app = typer.Typer(help="Bearer tokens of the admin API and console (on the database only).",
                         no_args_is_help=True)


@tokens_app.command("create")
def token_create(
    label: Annotated[str, typer.Option(help="whose token it is")] = "",
    expires_in: Annotated[str | None, typer.Option(
        "--expires-in", metavar="DURATION", help="refused after this long (12h, 90d, 2w); default: never expires")] = None,
    scope: Annotated[str, typer.Option(help="operator (every operation) or read-only (reads only)")] = "operator",
    as_json: Json = False,
) -> None:
    """Create an admin token; it is printed this once."""
    from acme_ra.db.inventory import parse_duration

    def body() -> None:
        try:
            lifetime = parse_duration(expires_in) if expires_in else None
        except ValueError as error:
            raise CommandError(f"--expires-in: {error}", EXIT_USAGE) from None
        row = on_database(lambda ops: ops.create_admin_token(label, scope, lifetime))
        if as_json:
            emit_json(row)
        else:
            typer.echo(row["token"])
            until = f", expires {row['expires_at']}" if row["expires_at"] else ""
            typer.echo(f"(admin token {row['id']}, {row['scope']}{until}: shown this once; store it now)", err=True)

    run(body)


@tokens_app.command("list")
def token_list(as_json: Json = False) -> None:
    """List admin tokens (never the tokens themselves)."""

    def body() -> None:
        rows = on_database(lambda ops: ops.list_admin_tokens())
        now = dt.datetime.now(dt.UTC)
        for row in rows:
            row["state"] = "revoked" if row["revoked_at"] else (
                "expired" if row["expires_at"] and dt.datetime.fromisoformat(row["expires_at"]) <= now else "live")
        emit_json(rows) if as_json else table(rows, [
            ("id", "ID"), ("label", "LABEL"), ("scope", "SCOPE"), ("state", "STATE"), ("created_at", "CREATED"),
            ("expires_at", "EXPIRES"), ("last_used_at", "LAST USED"), ("revoked_at", "REVOKED")])

    run(body)


@tokens_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke an admin token: its API calls and console sessions stop working at once."""

    def body() -> None:
        on_database(lambda ops: ops.revoke_admin_token(token_id))
        typer.echo(f"Admin token {token_id} revoked.")

    run(body)


# audit log ----------------------------------------------------------------------------------

audit_app = typer.Typer(help="The audit log of admin changes: who, when, from where, what.", no_args_is_help=True)


@audit_app.command("list")
def audit_list(
    action: Annotated[str | None, typer.Option(help="only this action (certificate.revoke), or a prefix "
                                                    "ending with a dot (certificate.)")] = None,
    token_id: Annotated[str | None, typer.Option("--token-id", help="only changes made with this admin token")] = None,
    subject: Annotated[str | None, typer.Option(help="only changes to this id (certificate id, EAB kid...)")] = None,
    limit: Limit = 100,
    offset: Annotated[int, typer.Option(metavar="N", min=0, help="skip the N newest entries")] = 0,
    as_json: Json = False, url: Url = None, token: Token = None,
) -> None:
    """The audit log, newest first."""
    from acme_ra.db.audit import AuditFilter

    def body() -> None:
        wanted = AuditFilter(action=action, token_id=token_id, subject=subject)
        rows = call(url, token, "GET", "/audit", lambda ops: ops.list_audit(wanted, limit, offset),
                    params={"action": action, "token_id": token_id, "subject": subject, "limit": limit,
                            "offset": offset})
        emit_json(rows) if as_json else table(rows, [
            ("at", "TIME"), ("actor", "WHO"), ("token_id", "TOKEN"), ("client", "FROM"), ("action", "ACTION"),
            ("subject", "SUBJECT"), ("detail", "DETAIL")])

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="admin-token")
    app.add_typer(audit_app, name="audit")
