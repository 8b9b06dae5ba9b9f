"""``python -m acme_ra_admin`` serves the admin API and web console on ACME_RA_ADMIN_LISTEN (over
HTTPS with ACME_RA_ADMIN_TLS_CERT_FILE and ACME_RA_ADMIN_TLS_KEY_FILE)."""

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
    # ACME_RA_ADMIN_TLS_CERT_FILE / _KEY_FILE: HTTPS on the admin listener itself (TLS 1.2+).
    tls = {"ssl_certfile": str(settings.admin_tls_cert_file), "ssl_keyfile": str(settings.admin_tls_key_file)} \
        if settings.admin_tls_cert_file else {}
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                timeout_graceful_shutdown=10, proxy_headers=False, **tls)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
