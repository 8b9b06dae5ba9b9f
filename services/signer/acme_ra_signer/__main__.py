"""``python -m acme_ra_signer`` runs the signer; ``python -m acme_ra_signer bootstrap`` prepares
the lab CA, the CA bundle and the frontend's TLS certificate, then exits;
``python -m acme_ra_signer check-upstream`` registers (if needed) and checks the upstream
account(s), prints one line per upstream, and exits 0 when all are usable."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from acme_ra.config import Settings

USAGE = "usage: python -m acme_ra_signer [bootstrap | check-upstream]"
NATS_REQUIRED = (
    "acme-ra: invalid configuration: ACME_RA_NATS_URL: required for the signer "
    "(make dev starts an embedded nats-server)"
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if args == ["bootstrap"]:
        return bootstrap()
    if args == ["check-upstream"]:
        return check_upstream()
    if args:
        print(USAGE, file=sys.stderr)
        return 2
    return serve()


def bootstrap() -> int:
    from acme_ra.config import get_settings
    from acme_ra.telemetry import setup_logging
    from acme_ra_signer import bootstrap as bootstrapping
    from acme_ra_signer.labca import LabCAError

    settings = get_settings()
    setup_logging("signer", settings.log_level)
    try:
        bootstrapping.run(settings)
    except (bootstrapping.BootstrapError, LabCAError, OSError) as error:
        print(f"acme-ra: bootstrap failed: {error}", file=sys.stderr)
        return 1
    return 0


def serve() -> int:
    import uvicorn

    from acme_ra.config import get_settings, parse_host_port
    from acme_ra.telemetry import init_tracing, setup_logging
    from acme_ra_signer.app import create_app

    settings = get_settings()
    if not settings.nats_url:
        print(NATS_REQUIRED, file=sys.stderr)
        return 2
    problem = upstream_config_problem(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    setup_logging("signer", settings.log_level)
    init_tracing("signer")
    host, port = parse_host_port(settings.signer_listen)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=60,
    )
    return 0


def upstream_config_problem(settings: Settings) -> str | None:
    """One line saying what is wrong with the upstream configuration, or None."""
    if settings.upstream != "acme":
        return None
    from acme_ra_signer.upstream.catalog import UpstreamConfigError, load_catalog, sealing_secret

    try:
        load_catalog(settings)
        sealing_secret(settings)
    except UpstreamConfigError as error:
        return str(error)
    return None


def check_upstream() -> int:
    import asyncio

    from acme_ra.config import get_settings
    from acme_ra.telemetry import setup_logging

    settings = get_settings()
    setup_logging("signer", "warning")
    problem = upstream_config_problem(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    return asyncio.run(_check_upstream(settings))


async def _check_upstream(settings: Settings) -> int:
    from acme_ra.db.engine import Database
    from acme_ra_signer.upstream import make_driver
    from acme_ra_signer.upstream.base import UpstreamError

    db = Database(settings.effective_database_url, 2)
    driver = make_driver(settings, db)
    failed = 0
    try:
        upstreams = getattr(driver, "upstreams", None)
        checks = upstreams.items() if upstreams else [(settings.upstream, driver)]
        for name, upstream in checks:
            try:
                await upstream.check()
            except UpstreamError as error:
                failed += 1
                print(f"acme-ra: upstream {name}: not ready: {error}", file=sys.stderr)
            else:
                account = getattr(getattr(upstream, "accounts", None), "known", None)
                print(f"upstream {name}: ready" + (f" (account {account.url})" if account else ""))
    finally:
        await driver.close()
        await db.dispose()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
