"""``python -m acme_ra_signer`` runs the signer; ``python -m acme_ra_signer bootstrap`` prepares
the lab CA, the CA bundle and the frontend's TLS certificate, then exits."""

from __future__ import annotations

import sys

USAGE = "usage: python -m acme_ra_signer [bootstrap]"
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
    from acme_ra.telemetry import setup_logging
    from acme_ra_signer.app import create_app

    settings = get_settings()
    if not settings.nats_url:
        print(NATS_REQUIRED, file=sys.stderr)
        return 2
    setup_logging("signer", settings.log_level)
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


if __name__ == "__main__":
    sys.exit(main())
