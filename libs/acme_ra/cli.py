"""``acme-ra``: the operator's command.

    acme-ra dev       everything on one machine (what ``make dev`` runs)
    acme-ra migrate   apply the database migrations to ACME_RA_DATABASE_URL
"""

from __future__ import annotations

import argparse
import sys

from acme_ra import launcher
from acme_ra.config import get_settings


def migrate() -> int:
    settings = get_settings()
    if not settings.database_url:  # the default SQLite file lives in the state dir
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    from acme_ra.db.migrate import upgrade  # Alembic is only needed here

    upgrade(settings.effective_database_url)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acme-ra", description="acme-ra, an ACME Registration Authority")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    dev = commands.add_parser("dev", help="run everything on this machine: nats-server, migrations, the services")
    launcher.add_arguments(dev)
    commands.add_parser("migrate", help="apply the database migrations to ACME_RA_DATABASE_URL")
    args = parser.parse_args(argv)
    if args.command == "dev":
        return launcher.run(args)
    return migrate()


if __name__ == "__main__":
    sys.exit(main())
