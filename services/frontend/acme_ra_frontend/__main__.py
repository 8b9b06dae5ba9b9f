"""``python -m acme_ra_frontend``: serve the ACME API with TLS on ACME_RA_LISTEN."""

from __future__ import annotations

import sys

from acme_ra.config import get_settings, parse_host_port


def main() -> None:
    settings = get_settings()  # before the heavy imports: a bad setting is reported at once
    if not settings.nats_url:
        print(
            "acme-ra: invalid configuration: ACME_RA_NATS_URL: required for the frontend "
            "(make dev starts an embedded nats-server)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    cert, key = settings.frontend_tls_paths
    if not cert.is_file() or not key.is_file():
        print(
            f"acme-ra: invalid configuration: no TLS certificate at {cert}: set ACME_RA_TLS_CERT_FILE/"
            "ACME_RA_TLS_KEY_FILE or run `python -m acme_ra_signer bootstrap`",
            file=sys.stderr,
        )
        raise SystemExit(2)
    import uvicorn

    from acme_ra.telemetry import init_tracing, setup_logging
    from acme_ra_frontend.app import create_app
    from acme_ra_frontend.metrics import start_metrics_server
    from acme_ra_frontend.tls_reload import TlsWatch

    setup_logging("frontend", settings.log_level)
    init_tracing("frontend")
    if settings.metrics_listen:
        start_metrics_server(settings.metrics_listen)
    host, port = parse_host_port(settings.listen)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host.strip("[]"),
        port=port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    config.load()
    # The signer renews a certificate it obtained for us in place; reload it without a restart.
    app.state.tls_watch = TlsWatch(config.ssl, cert, key)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
