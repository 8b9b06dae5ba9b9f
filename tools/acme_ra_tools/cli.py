"""``acme-ra``: the operator's command (typer).

    acme-ra dev            everything on one machine (what ``make dev`` runs)
    acme-ra db migrate     apply the database migrations to ACME_RA_DATABASE_URL (alias: ``migrate``)
    acme-ra config check   validate the configuration, print the effective settings (secrets masked)
    acme-ra config from-acme-proxy ca.json
                           print the settings equivalent to an esnet/acme-proxy ca.json
    acme-ra eab | accounts | orders | certs | upstream | queues | policy | admin-token ...
                           operator commands (``acme_ra_admin.commands``): on the database, or
                           through the admin API with --url / ACME_RA_ADMIN_URL

Every command reads the same ``ACME_RA_*`` settings as the services. Exit codes: 0 done,
1 refused or failed, 2 bad usage or configuration, 3 not found, 4 not authorized.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from acme_ra.config import ENV_PREFIX, Settings, get_settings

app = typer.Typer(
    name="acme-ra",
    help="acme-ra, an ACME Registration Authority in front of an upstream CA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
config_app = typer.Typer(help="The ACME_RA_* configuration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")

# Shown instead of a secret's value.
MASK = "********"


def _print_version(asked: bool) -> None:
    if asked:
        from acme_ra import __version__

        print(f"acme-ra {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="print the version and exit")] = False) -> None:
    """acme-ra, an ACME Registration Authority in front of an upstream CA."""


def migrate() -> int:
    settings = get_settings()
    if not settings.database_url:  # the default SQLite file lives in the state dir
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    from sqlalchemy.exc import SQLAlchemyError

    from acme_ra.db.migrate import upgrade  # Alembic is only needed here
    from acme_ra.redaction import mask_url

    try:
        upgrade(settings.effective_database_url)
    except (SQLAlchemyError, OSError) as error:  # one line, the URL's password masked, no trace
        reason = (str(error).splitlines() or [""])[0] or type(error).__name__
        print(f"acme-ra: cannot migrate the database {mask_url(settings.effective_database_url)}: "
              f"{mask_url(reason)}", file=sys.stderr)
        return 1
    return 0


@app.command("dev")
def dev(
    nats_port: Annotated[int | None, typer.Option(
        help="port of the embedded nats-server (default 4222, or any free port if taken)")] = None,
) -> None:
    """Run everything on this machine: nats-server, migrations, the services (make dev)."""
    from acme_ra_tools import dev as dev_topology

    raise typer.Exit(dev_topology.run(argparse.Namespace(nats_port=nats_port)))


@app.command("migrate")
def migrate_command() -> None:
    """Apply the database migrations to ACME_RA_DATABASE_URL (same as `db migrate`)."""
    raise typer.Exit(migrate())


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the database migrations to ACME_RA_DATABASE_URL."""
    raise typer.Exit(migrate())


@db_app.command("purge")
def db_purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would be deleted, delete nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    share: Annotated[float | None, typer.Option(
        "--share", min=0.01, max=1.0, help="the part of its time the purge may keep the database busy "
        "(default ACME_RA_PURGE_SHARE; 1: as fast as it can)")] = None,
) -> None:
    """Delete what ACME_RA_RETENTION_DAYS no longer keeps (the signers do it hourly). Ctrl-C or
    SIGTERM stops it between two batches; what was deleted until then is reported."""
    import asyncio
    import datetime as dt
    import signal

    from sqlalchemy.exc import SQLAlchemyError

    from acme_ra.db import retention
    from acme_ra.db.engine import Database
    from acme_ra.redaction import mask_url

    settings = get_settings()
    if not settings.retention_days:
        print("acme-ra: ACME_RA_RETENTION_DAYS=0 keeps everything: nothing to purge", file=sys.stderr)
        raise typer.Exit(2)

    async def run() -> retention.PurgeReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        db = Database(settings.effective_database_url)
        try:
            return await retention.purge(db, dt.timedelta(days=settings.retention_days), dry_run=dry_run,
                                         share=settings.purge_share if share is None else share, stop=stop)
        finally:
            await db.dispose()

    try:
        report = asyncio.run(run())
    except (SQLAlchemyError, OSError) as error:
        reason = (str(error).splitlines() or [""])[0] or type(error).__name__
        print(f"acme-ra: cannot purge the database {mask_url(settings.effective_database_url)}: "
              f"{mask_url(reason)}", file=sys.stderr)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    elif report.skipped:
        typer.echo("another acme-ra process is purging now: nothing done")
    else:
        verb = "would delete" if dry_run else "deleted (stopped before the end)" if report.stopped else "deleted"
        typer.echo(f"rows older than {report.cutoff:%Y-%m-%d %H:%M} UTC ({settings.retention_days} days) {verb}"
                   f" in {report.seconds:.1f} s:")
        for table, count in report.rows.items():
            typer.echo(f"  {table:<22} {count}")
    raise typer.Exit(1 if report.skipped else 0)


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Every setting by its variable name, secrets masked (passwords inside URLs too)."""
    from pydantic import SecretStr

    from acme_ra.redaction import mask_url

    shown: dict[str, Any] = {}
    for field in Settings.model_fields:
        value = getattr(settings, field)
        if isinstance(value, SecretStr):
            value = MASK
        elif field == "database_url":
            value = mask_url(settings.effective_database_url)
        elif isinstance(value, str):
            value = mask_url(value)  # user:password@host (NATS, the upstream proxy...)
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            value = str(value)
        shown[ENV_PREFIX + field.upper()] = value
    return shown


def config_problems(settings: Settings) -> list[str]:
    """What the settings class cannot see on its own: the upstream catalogue, the client networks,
    the sealing key."""
    problems = []
    if settings.upstream == "acme":
        from acme_ra_signer.upstream.catalog import UpstreamConfigError, load_catalog

        try:
            load_catalog(settings)
        except UpstreamConfigError as error:
            problems.append(str(error).removeprefix("acme-ra: "))
    from acme_ra.client_networks import ClientNetworksError, load_client_networks

    try:
        load_client_networks(settings)
    except ClientNetworksError as error:
        problems.append(str(error).removeprefix("acme-ra: "))
    if settings.secret_key is not None and len(settings.secret_key.get_secret_value()) < 16:
        problems.append("invalid configuration: ACME_RA_SECRET_KEY: must be at least 16 characters")
    if settings.secret_key is None and settings.secret_key_file is None and settings.upstream != "lab":
        problems.append("warning: ACME_RA_SECRET_KEY(_FILE) unset: secrets are sealed with STATE_DIR/secret.key, "
                        "which every replica must share")
    return problems


@config_app.command("check")
def config_check(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Validate the configuration and print the effective settings, secrets masked.
    Exit status 2 when the configuration is invalid."""
    settings = get_settings()  # one line and exit 2 on an invalid variable
    problems = config_problems(settings)
    errors = [p for p in problems if not p.startswith("warning:")]
    shown = effective_settings(settings)
    if as_json:
        typer.echo(json.dumps({"valid": not errors, "problems": problems, "settings": shown}, indent=2))
    else:
        width = max(len(name) for name in shown)
        for name, value in shown.items():
            typer.echo(f"{name.ljust(width)}  {'' if value is None else value}")
        for problem in problems:
            typer.echo(f"acme-ra: {problem}", err=True)
        if not errors:
            typer.echo("configuration is valid", err=True)
    raise typer.Exit(2 if errors else 0)


@config_app.command("from-acme-proxy")
def config_from_acme_proxy(
    ca_json: Annotated[list[Path], typer.Argument(
        metavar="CA_JSON...", help="the esnet/acme-proxy (step-ca) ca.json; several need --config-file")],
    secrets_dir: Annotated[Path | None, typer.Option(
        "--secrets-dir", metavar="DIR",
        help="write the EAB HMAC key and TSIG secret there (mode 0600) and point the settings at them; "
             "default: name the files under /etc/acme-ra for you to write")] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config-file", metavar="PATH",
        help="write the upstreams to this ACME_RA_CONFIG_FILE (YAML), one per ca.json, named after its file, "
             "and its provisioners routed to it")] = None,
) -> None:
    """Print the acme-ra environment file equivalent to an esnet/acme-proxy ca.json.
    What does not carry over is one line each on stderr; exit status 2 for an unreadable ca.json."""
    from acme_ra_admin import acme_proxy_files as files
    from acme_ra_admin import acme_proxy_migration as migration_module

    if len(ca_json) > 1 and config_file is None:
        typer.echo("acme-ra: several ca.json files become several upstreams: give --config-file PATH", err=True)
        raise typer.Exit(2)
    try:
        documents = [(path, migration_module.load(path)) for path in ca_json]
        if config_file is None:
            result: Any = migration_module.migrate(documents[0][1], secrets_dir)
        else:
            config_file = config_file.resolve()
            result = files.combine(documents, config_file, secrets_dir)
        written = files.write_secrets(result) if secrets_dir is not None else []
        if config_file is not None:
            config_file.write_text(files.render_config(result, ca_json))
            written.append(config_file)
    except migration_module.MigrationError as error:
        typer.echo(f"acme-ra: {error}", err=True)
        raise typer.Exit(2) from None
    except OSError as error:
        typer.echo(f"acme-ra: cannot write {error.filename or secrets_dir}: {error.strerror or error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(files.render_env(result, ca_json if config_file else ca_json[0]), nl=False)
    for note in result.notes:
        typer.echo(f"acme-ra: {note}", err=True)
    for path in written:
        typer.echo(f"acme-ra: wrote {path}" + ("" if path == config_file else " (mode 0600)"), err=True)


def _mount_operator_commands() -> None:
    from acme_ra_admin.commands import register
    from acme_ra_admin.service_commands import upstream_app
    from acme_ra_tools.persist_record import mount

    register(app)
    mount(upstream_app)  # acme-ra upstream persist-record (issue 21)


_mount_operator_commands()


def main(argv: list[str] | None = None) -> int:
    """Run ``acme-ra``; the exit status is returned (``SystemExit`` is caught)."""
    try:
        app(args=argv, prog_name="acme-ra")
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
