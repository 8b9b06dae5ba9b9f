"""``python -m acme_ra_admin`` serves the admin API and web console on ACME_RA_ADMIN_LISTEN."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print("usage: python -m acme_ra_admin  (the admin API and console on ACME_RA_ADMIN_LISTEN)")
        return 0
    if args:
        print("usage: python -m acme_ra_admin", file=sys.stderr)
        return 2
    import uvicorn

    from acme_ra.config import get_settings, parse_host_port
    from acme_ra.telemetry import setup_logging
    from acme_ra_admin.app import create_app

    settings = get_settings()
    setup_logging("admin", settings.log_level)
    host, port = parse_host_port(settings.admin_listen)
    # proxy_headers=False: uvicorn would take X-Forwarded-Proto/-For from any 127.0.0.1 peer (its
    # FORWARDED_ALLOW_IPS default); the console trusts only ACME_RA_TRUSTED_PROXIES (console.came_over_https).
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                timeout_graceful_shutdown=10, proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
