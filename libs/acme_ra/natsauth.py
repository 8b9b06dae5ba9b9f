"""Who may do what on the bus: a NATS user per service, each allowed only its own job.

NATS carries authority: a validation job makes a validator write a challenge's outcome, an issue
job makes the signer issue, a revocation request makes it revoke, a CAA answer lets a finalize
through. So each service connects as its own user, and nats-server refuses (permissions
violation) whatever that user's job does not need (the table in docs/security.md, "Bus
permissions"). This module is the one place that says so:

- :data:`PERMISSIONS`: each role's publish and subscribe allow-lists;
- :func:`server_config`: the nats-server ``authorization`` block (and TLS) for them, used by
  ``make dev``'s embedded server (acme_ra_tools.dev), ``make lab`` (acme_ra_tools.lab), docker-compose's
  init job, the tests; the Kubernetes lab's ConfigMap is its output (tests/deploy checks it);
- :func:`ensure_credentials`: random passwords in files of mode 0600, created once;
- :func:`connect_options`: a service's side, from its ``ACME_RA_NATS_*`` settings.

Each role's replies come to its own inbox prefix (``_INBOX.<role>.``), and a role may subscribe
only there: one service cannot read another's replies. Answers to requests (CAA re-checks,
revocations) go back through ``allow_responses``: a responder may publish one reply to the reply
subject of a request it received, and to no other inbox.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acme_ra import bus, perspectives

if TYPE_CHECKING:
    from acme_ra.config import Settings

# The services, each a NATS user of its own name.
ROLES = ("frontend", "validator", "signer", "admin", "perspective")
# A person's user (the nats CLI: purge a stream, inspect): every permission. No service uses it;
# production may leave it out (server_config(..., operator=False)).
OPERATOR = "operator"
# Length of a generated password (bytes of randomness, URL-safe base64).
PASSWORD_BYTES = 32
# The files make dev / make lab write under STATE_DIR (passwords, nats-server.conf), mode 0600.
AUTH_DIR_NAME = "nats-auth"
CONFIG_FILE_NAME = "nats-server.conf"

_API = "$JS.API"


def inbox_prefix(role: str) -> str:
    """Where ``role``'s replies come (nats-py ``inbox_prefix``): its user may subscribe only there."""
    return f"_INBOX.{role}"


def _event(kind: str) -> str:
    return f"acme.events.{kind}"


def _pull(durable: str) -> tuple[str, ...]:
    """Take jobs from ``durable`` of the job stream: its info, pull requests, acks (+WPI, -NAK, +TERM)."""
    return (
        f"{_API}.CONSUMER.INFO.{bus.JOBS_STREAM}.{durable}",
        f"{_API}.CONSUMER.MSG.NEXT.{bus.JOBS_STREAM}.{durable}",
        f"$JS.ACK.{bus.JOBS_STREAM}.{durable}.>",
    )


# bus.ensure_streams: create or update the two streams and the two durable consumers. Never
# delete or purge: no service may (an operator may).
_STREAM_SETUP = tuple(
    f"{_API}.STREAM.{verb}.{stream}"
    for stream in (bus.JOBS_STREAM, bus.EVENTS_STREAM)
    for verb in ("INFO", "CREATE", "UPDATE")
) + (
    f"{_API}.CONSUMER.INFO.{bus.JOBS_STREAM}.*",
    f"{_API}.CONSUMER.CREATE.{bus.JOBS_STREAM}.>",
    f"{_API}.CONSUMER.DURABLE.CREATE.{bus.JOBS_STREAM}.*",
)


@dataclass(frozen=True)
class Permissions:
    """What one role may publish and subscribe to (everything else is refused), and whether it
    may answer requests it received (``allow_responses``: one reply to each request's reply
    subject)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responds: bool = False


PERMISSIONS: dict[str, Permissions] = {
    # Publishes the jobs (after its commit), asks for CAA re-checks and revocations, waits for
    # the validated/issued/failed events; creates the streams (bus.ensure_streams).
    "frontend": Permissions(
        publish=(bus.SUBJECT_VALIDATE, bus.SUBJECT_ISSUE, bus.SUBJECT_CAA_RPC, bus.SUBJECT_REVOKE_RPC,
                 *_STREAM_SETUP),
        subscribe=("acme.events.>", f"{inbox_prefix('frontend')}.>"),
    ),
    # Takes validation jobs, says "validated", answers CAA re-checks. It fetches what the internet
    # serves: it may create nothing, revoke nothing, publish no job and no other event.
    "validator": Permissions(
        publish=(*_pull(bus.DURABLE_VALIDATOR), _event("validated"), perspectives.SUBJECT_CHECKS),
        subscribe=(bus.SUBJECT_CAA_RPC, perspectives.SUBJECT_HEARTBEATS, f"{inbox_prefix('validator')}.>"),
        responds=True,
    ),
    # A remote perspective (ACME_RA_VALIDATOR_ROLE=remote, in another site behind a leaf node):
    # says it is alive and answers the check requests sent to it; nothing else (no job, no
    # event, no database). Its answers go to the validators' inboxes: through a leaf node they
    # are plain publishes (allow_responses does not cover a leaf connection); the primary binds
    # each answer to its request (a random id). A site may narrow it: perspective_permissions(name).
    "perspective": Permissions(
        publish=(perspectives.SUBJECT_HEARTBEATS, f"{inbox_prefix('validator')}.>"),
        subscribe=(perspectives.SUBJECT_CHECKS, f"{inbox_prefix('perspective')}.>"),
        responds=True,
    ),
    # Takes issue jobs, says "issued", "failed" and "revoked", answers revocation requests;
    # creates the streams (bus.ensure_streams).
    "signer": Permissions(
        publish=(*_pull(bus.DURABLE_SIGNER), _event("issued"), _event("failed"), _event("revoked"),
                 *_STREAM_SETUP),
        subscribe=(bus.SUBJECT_REVOKE_RPC, f"{inbox_prefix('signer')}.>"),
        responds=True,
    ),
    # Asks for revocations; reads the job stream's and consumers' state (the queue status).
    "admin": Permissions(
        publish=(bus.SUBJECT_REVOKE_RPC, f"{_API}.STREAM.INFO.{bus.JOBS_STREAM}",
                 f"{_API}.CONSUMER.INFO.{bus.JOBS_STREAM}.*"),
        subscribe=(f"{inbox_prefix('admin')}.>",),
    ),
    OPERATOR: Permissions(publish=(">",), subscribe=(">",)),
}


def perspective_permissions(name: str) -> Permissions:
    """The permissions of a user for the one perspective ``name`` (a user per remote site):
    its own heartbeat and check subjects only, so it can neither speak for nor hear another."""
    return Permissions(
        publish=(perspectives.heartbeat_subject(name), f"{inbox_prefix('validator')}.>"),
        subscribe=(perspectives.check_subject(name), f"{inbox_prefix('perspective')}.>"),
        responds=True,
    )


def password_variable(role: str) -> str:
    """The environment variable nats-server reads ``role``'s password from in a static config."""
    return f"NATS_PASSWORD_{role.upper()}"


def _quoted(text: str) -> str:
    return json.dumps(text)  # nats-server's configuration reads JSON strings as they are


def _user(role: str, password: str | None) -> str:
    permissions = PERMISSIONS[role]
    publish = ", ".join(_quoted(s) for s in permissions.publish)
    subscribe = ", ".join(_quoted(s) for s in permissions.subscribe)
    secret = _quoted(password) if password is not None else f"${password_variable(role)}"
    lines = [
        f"    {{user: {_quoted(role)}, password: {secret}, permissions: {{",
        f"      publish: {{allow: [{publish}]}}",
        f"      subscribe: {{allow: [{subscribe}]}}",
    ]
    if permissions.responds:
        lines.append("      allow_responses: true")
    lines.append("    }}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ServerTls:
    """nats-server's TLS: its certificate and key; with ``client_ca``, client certificates from
    that CA are required (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def server_config(passwords: Mapping[str, str] | None = None, *, operator: bool = True,
                  tls: ServerTls | None = None) -> str:
    """The nats-server configuration of the bus's users (``-c FILE``; listen address, JetStream
    and its store stay on the command line). ``passwords``: role -> password; None writes
    ``$NATS_PASSWORD_<ROLE>``, which nats-server takes from its environment (a static config
    whose secrets come from elsewhere)."""
    roles = [*ROLES, OPERATOR] if operator else list(ROLES)
    users = ",\n".join(_user(role, None if passwords is None else passwords[role]) for role in roles)
    text = (
        "# acme-ra's NATS users, each allowed only its service's job (acme_ra.natsauth;\n"
        "# docs/security.md, \"Bus permissions\"). Written by acme-ra: edit the code, not this file.\n"
        "authorization {\n"
        "  users: [\n"
        f"{users}\n"
        "  ]\n"
        "}\n"
    )
    if tls is not None:
        text += "tls {\n"
        text += f"  cert_file: {_quoted(str(tls.cert))}\n  key_file: {_quoted(str(tls.key))}\n"
        if tls.client_ca is not None:
            text += f"  ca_file: {_quoted(str(tls.client_ca))}\n  verify: true\n"
        text += "}\n"
    return text


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC


def password_file(directory: Path, role: str) -> Path:
    return directory / f"{role}.password"


def ensure_credentials(directory: Path, *, operator: bool = True) -> dict[str, str]:
    """Each role's password, made once (random) in ``directory/<role>.password`` (mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    passwords = {}
    for role in [*ROLES, OPERATOR] if operator else ROLES:
        path = password_file(directory, role)
        if not path.is_file() or not path.read_text().strip():
            _write_private(path, secrets.token_urlsafe(PASSWORD_BYTES).encode() + b"\n")
        passwords[role] = path.read_text().strip()
    return passwords


def write_server_config(directory: Path, tls: ServerTls | None = None) -> Path:
    """The passwords (made once) and ``directory/nats-server.conf`` (mode 0600) naming them."""
    passwords = ensure_credentials(directory)
    path = directory / CONFIG_FILE_NAME
    _write_private(path, server_config(passwords, tls=tls).encode())
    return path


def service_env(directory: Path, role: str) -> dict[str, str]:
    """The ``ACME_RA_NATS_*`` variables of a ``role`` process using the credentials of ``directory``."""
    return {"ACME_RA_NATS_USER": role, "ACME_RA_NATS_PASSWORD_FILE": str(password_file(directory, role))}


# The client side ------------------------------------------------------------------------------


def user_options(directory: Path, role: str) -> dict[str, Any]:
    """nats-py ``connect`` options of ``role``'s user of ``directory`` (tests, tools)."""
    return {"user": role, "password": password_file(directory, role).read_text().strip(),
            "inbox_prefix": inbox_prefix(role)}


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for NATS: the configured roots (or the system's) and client certificate;
    None when nothing about TLS is configured (nats-py then uses the system's roots for a
    tls:// URL or a server that requires TLS)."""
    if settings.nats_tls_ca is None and settings.nats_tls_cert_file is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None)
    if settings.nats_tls_cert_file is not None and settings.nats_tls_key_file is not None:
        context.load_cert_chain(str(settings.nats_tls_cert_file), str(settings.nats_tls_key_file))
    return context


def connect_options(settings: Settings, role: str) -> dict[str, Any]:
    """nats-py ``connect`` options of a ``role`` process: its inbox prefix, its user and password
    (none when ``ACME_RA_NATS_USER`` is unset: a NATS without auth), its TLS."""
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(role)}
    if settings.nats_user:
        if settings.nats_password_file is not None:
            password = settings.nats_password_file.read_text().strip()
        else:
            assert settings.nats_password is not None  # the settings check that one is set
            password = settings.nats_password.get_secret_value()
        options.update(user=settings.nats_user, password=password)
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acme_ra.natsauth", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    config = commands.add_parser("config", help="print the nats-server configuration, passwords from "
                                                "$NATS_PASSWORD_<ROLE> (a static configuration)")
    config.add_argument("--no-operator", action="store_true", help="leave out the operator user")
    write = commands.add_parser("write", help="make the passwords (once) and nats-server.conf in DIR")
    write.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "config":
        sys.stdout.write(server_config(None, operator=not args.no_operator))
        return 0
    path = write_server_config(args.directory)
    print(f"NATS users' passwords and {path} written (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
