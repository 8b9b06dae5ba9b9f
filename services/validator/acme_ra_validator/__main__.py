"""``python -m acme_ra_validator``: serve /healthz /readyz /metrics and consume validation jobs."""

from __future__ import annotations

import sys

import uvicorn

from acme_ra.config import get_settings, parse_host_port
from acme_ra.telemetry import init_tracing, setup_logging
from acme_ra_validator.app import create_app


def main() -> None:
    settings = get_settings()
    if not settings.nats_url:
        print(
            "acme-ra: invalid configuration: ACME_RA_NATS_URL: required for the validator "
            "(make dev starts an embedded nats-server)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    setup_logging("validator", settings.log_level)
    init_tracing("validator")
    host, port = parse_host_port(settings.validator_listen)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
