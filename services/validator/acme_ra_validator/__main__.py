"""``python -m acme_ra_validator``: serve /healthz /readyz /metrics and consume validation jobs."""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from acme_ra.config import Settings, get_settings, parse_host_port
from acme_ra.telemetry import init_tracing, setup_logging
from acme_ra_validator import dnssec
from acme_ra_validator.app import create_app
from acme_ra_validator.resolver import NameResolver

# Wait between two DNSSEC checks of resolvers that do not answer yet, at start-up (seconds).
DNSSEC_RETRY_SECONDS = 1.0


def main() -> None:
    settings = get_settings()
    if not settings.nats_url:
        print(
            "acme-ra: invalid configuration: ACME_RA_NATS_URL: required for the validator "
            "(make dev starts an embedded nats-server)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if settings.dnssec != "off":
        refusal = asyncio.run(dnssec_refusal(settings))
        if refusal is not None:
            print(f"acme-ra: {refusal}", file=sys.stderr)
            raise SystemExit(2)
    setup_logging("validator", settings.log_level)
    init_tracing("validator")
    host, port = parse_host_port(settings.validator_listen)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False, lifespan="on")


async def dnssec_refusal(settings: Settings) -> str | None:
    """Why this validator must not start under ``ACME_RA_DNSSEC`` (a trust anchors file without
    anchors, a resolver that does not validate), or None; waits up to
    ``dnssec.STARTUP_WAIT_SECONDS`` for resolvers that do not answer yet."""
    try:
        resolver = NameResolver.from_settings(settings)
    except (OSError, ValueError) as error:
        return f"invalid configuration: ACME_RA_DNSSEC_TRUST_ANCHORS_FILE: {error}"
    deadline = asyncio.get_running_loop().time() + dnssec.STARTUP_WAIT_SECONDS
    while True:
        refusal = await resolver.probe_dnssec()
        if refusal is None or dnssec.UNANSWERED not in refusal or asyncio.get_running_loop().time() > deadline:
            return refusal
        await asyncio.sleep(DNSSEC_RETRY_SECONDS)


if __name__ == "__main__":
    main()
