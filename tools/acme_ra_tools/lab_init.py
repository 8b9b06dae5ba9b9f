"""``python -m acme_ra_tools.lab init DIR``: docker-compose's init job. It writes what the compose
lab's containers share: the lab TLS material (``DIR/tls``, :mod:`acme_ra_tools.lab_tls`), the
sealing secret every service shares (``DIR/secret.key``) and the NATS users' passwords with the
nats-server configuration naming them (``DIR/nats``, :mod:`acme_ra.natsauth`).

``make lab`` (:class:`~acme_ra_tools.lab.ProcessLab`) writes the same into its state dir itself.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from acme_ra import natsauth
from acme_ra_tools.lab_tls import LOCAL_NAMES, ensure_tls_material, write_private


def ensure_secret_key(path: Path) -> bool:
    """The sealing secret every service shares (ACME_RA_SECRET_KEY_FILE), created once.
    Returns whether it was created now."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, secrets.token_urlsafe(32).encode() + b"\n", 0o600)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory")
    parser.add_argument("--names", default=",".join(LOCAL_NAMES),
                        help="comma list of the names every server certificate carries")
    parser.add_argument("--shared", action="store_true",
                        help="TLS keys readable by every user (containers that run as other users)")


def init(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    material = ensure_tls_material(directory / "tls", {"haproxy": names, "frontend": names, "pebble": names})
    secret = directory / "secret.key"
    ensure_secret_key(secret)
    nats_config = natsauth.write_server_config(directory / "nats")
    if args.shared:  # read by containers that run as other users (HAProxy, Pebble)
        for path in material.directory.iterdir():
            if path.name != "ca.key":
                path.chmod(0o644)
    print(f"lab TLS material in {material.directory} (CA {material.ca}), sealing secret {secret}, "
          f"NATS users {nats_config}")
    return 0
