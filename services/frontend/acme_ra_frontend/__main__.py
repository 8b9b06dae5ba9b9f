"""``python -m acme_ra_frontend``: serve the ACME API with TLS on ACME_RA_LISTEN (and, when set,
the upstream http-01 responder on ACME_RA_UPSTREAM_HTTP01_LISTEN)."""

from __future__ import annotations

import asyncio
import socket
import sys
from types import FrameType

from acme_ra.config import get_settings, parse_host_port


def main() -> None:
    settings = get_settings()  # before the heavy imports: a bad setting is reported at once
    from acme_ra.client_networks import ClientNetworksError, load_client_networks

    try:
        load_client_networks(settings)
    except ClientNetworksError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
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
    metrics_dir = None
    if settings.frontend_workers > 1:
        from acme_ra_frontend import workers

        metrics_dir = workers.prepare_metrics_dir()  # before prometheus_client is imported
    import uvicorn

    from acme_ra.telemetry import init_tracing, setup_logging
    from acme_ra_frontend.app import create_app
    from acme_ra_frontend.http_limits import HttpLimits, limited_protocol
    from acme_ra_frontend.metrics import start_metrics_server
    from acme_ra_frontend.tls_reload import TlsWatch

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT: /readyz answers 503 at once, the listener keeps serving for
        ACME_RA_SHUTDOWN_DELAY_SECONDS (load balancers take the replica out), then uvicorn
        stops accepting and drains the requests in flight."""

        def __init__(self, config: uvicorn.Config, app: object) -> None:
            super().__init__(config)
            self.acme_app = app
            self.draining = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            state = getattr(self.acme_app.state, "ra", None)  # type: ignore[attr-defined]
            if self.draining or state is None or settings.shutdown_delay_seconds <= 0:
                super().handle_exit(sig, frame)
                return
            self.draining = True
            state.stopping = True
            exit_now = super().handle_exit
            asyncio.get_running_loop().call_later(settings.shutdown_delay_seconds, lambda: exit_now(sig, frame))

    setup_logging("frontend", settings.log_level)
    host, port = parse_host_port(settings.listen)
    http01_sock = None  # the upstream http-01 responder's listener, bound before any fork
    if settings.upstream_http01_listen:
        from acme_ra_frontend import upstream_http01

        http01_sock = upstream_http01.bind(settings.upstream_http01_listen)

    def serve(sock: socket.socket | None = None) -> None:
        """One frontend: its app, its TLS context (reloaded when the certificate changes), uvicorn."""
        init_tracing("frontend")
        app = create_app(settings)
        if http01_sock is not None:
            upstream_http01.attach(app, http01_sock, settings)
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
            # httptools with the limits of ACME_RA_HTTP_* (request line, headers, timeouts)
            http=limited_protocol(HttpLimits.from_settings(settings)),
            timeout_keep_alive=settings.http_idle_timeout_seconds,  # type: ignore[arg-type]
        )
        config.load()
        # The signer renews a certificate it obtained for us in place; reload it without a restart.
        app.state.tls_watch = TlsWatch(config.ssl, cert, key)
        DrainingServer(config, app).run(sockets=[sock] if sock is not None else None)

    if settings.frontend_workers == 1:
        if settings.metrics_listen:
            start_metrics_server(settings.metrics_listen)
        serve()
        return
    sock = workers.bind(host.strip("[]"), port)

    def serve_metrics() -> None:  # in the parent, after the forks (a thread must not be forked)
        if http01_sock is not None:
            http01_sock.close()  # the workers hold it
        if settings.metrics_listen:
            start_metrics_server(settings.metrics_listen, multiprocess_dir=metrics_dir)

    raise SystemExit(workers.run_workers(settings.frontend_workers, sock, serve, metrics_dir, serve_metrics))

if __name__ == "__main__":
    main()
