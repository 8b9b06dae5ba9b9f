"""The image's HEALTHCHECK: GET /healthz of the service this container runs.

The service is the argument, or else read from PID 1's command line (the entrypoint execs
``python -m acme_ra_<service>``). Containers that run a one-off command (migrate, bootstrap)
are healthy while they run. Standard library only: it runs every few seconds.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from pathlib import Path

# Where each service answers /healthz: (its listen variable, its default, the scheme).
LISTENERS = {
    "frontend": ("ACME_RA_LISTEN", "0.0.0.0:8443", "https"),
    "validator": ("ACME_RA_VALIDATOR_LISTEN", "0.0.0.0:9124", "http"),
    "signer": ("ACME_RA_SIGNER_LISTEN", "0.0.0.0:9125", "http"),
    "admin": ("ACME_RA_ADMIN_LISTEN", "0.0.0.0:9443", "http"),
}
TIMEOUT_SECONDS = 4.0


def running_service() -> str | None:
    try:
        argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for arg in argv:
        name = arg.decode(errors="replace").removeprefix("acme_ra_")
        if arg.startswith(b"acme_ra_") and name in LISTENERS:
            return name
    return None


def health_url(service: str) -> str:
    variable, default, scheme = LISTENERS[service]
    host, _, port = os.environ.get(variable, default).rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"{scheme}://{host}:{port}/healthz"


def main(argv: list[str]) -> int:
    service = argv[1] if len(argv) > 1 else running_service()
    if service is None:
        return 0
    # Liveness of this process, not the certificate's validity: no verification on loopback.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(health_url(service), timeout=TIMEOUT_SECONDS, context=context) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"{service}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
