"""What ``acme-ra config from-acme-proxy`` writes (acme_proxy_migration maps one ca.json): several
ca.json files combined into one acme-ra (an upstream each in an ``ACME_RA_CONFIG_FILE``), the
environment file, and the secret files (mode 0600)."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acme_ra_admin.acme_proxy_migration import Migration, migrate


@dataclass
class Combined:
    """Several ca.json files as one acme-ra: an environment file and an ACME_RA_CONFIG_FILE."""
    env: list[tuple[str, str]]
    config: dict[str, Any]
    comments: dict[str, str]
    notes: list[str]
    secret_files: dict[Path, str]


def upstream_name(path: Path, taken: set[str]) -> str:
    """The upstream's name in the config file: the ca.json's file name (``rsa.json`` -> ``rsa``)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-")
    if name == "ca":  # step-ca's own file name says nothing about the upstream
        name = "default"
    if not name or name in taken:
        name = f"upstream-{len(taken) + 1}"
    return name


def combine(documents: list[tuple[Path, dict[str, Any]]], config_file: Path,
            secrets_dir: Path | None = None) -> Combined:
    """Each ca.json becomes an upstream of ``config_file`` (named after its file), its provisioners
    routed to it; the first ca.json gives the rest (listener, URL, metrics) and the default upstream."""
    upstreams: dict[str, dict[str, Any]] = {}
    routes: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    secret_files: dict[Path, str] = {}
    first: Migration | None = None
    for path, document in documents:
        name = upstream_name(path, set(upstreams))
        migration = migrate(document, secrets_dir, secret_prefix=name)
        notes += [f"{path}: {note}" for note in migration.notes]
        secret_files |= migration.secret_files
        upstreams[name] = migration.upstream
        for provisioner in migration.provisioners or ["acme"]:
            route = provisioner
            if route in routes:
                route = name if name not in routes else f"{name}-{provisioner}"
                notes.append(f"{path}: provisioner {provisioner}: the name is taken (upstream "
                             f"{routes[provisioner]['upstream']}), renamed {route} (/acme/{route}/directory)")
            routes[route] = {"upstream": name}
        if first is None:
            first = migration
            continue
        mine, theirs = dict(migration.frontend + migration.env), dict(first.frontend + first.env)
        for variable in sorted(set(mine) - {"ACME_RA_PROVISIONERS"}):
            if mine[variable] != theirs.get(variable):
                notes.append(f"{path}: {variable}={mine[variable]}: differs from the first ca.json's, "
                             "which acme-ra uses")
    assert first is not None
    env = first.frontend + [("ACME_RA_UPSTREAM", "acme"), ("ACME_RA_CONFIG_FILE", str(config_file))]
    env += [(k, v) for k, v in first.env if k != "ACME_RA_PROVISIONERS"]
    env.append(("ACME_RA_PROVISIONERS", ",".join(routes)))
    config = {"upstreams": upstreams, "default_upstream": next(iter(upstreams)), "provisioners": routes}
    return Combined(env, config, first.comments, notes, secret_files)


def render_config(combined: Combined, sources: list[Path]) -> str:
    """The ACME_RA_CONFIG_FILE (YAML)."""
    import yaml

    header = f"# acme-ra upstreams migrated from {', '.join(map(str, sources))} (acme-ra config from-acme-proxy)\n"
    return header + str(yaml.safe_dump(combined.config, sort_keys=False, default_flow_style=False))


def render_env(migration: Migration | Combined, source: Path | list[Path]) -> str:
    """The environment file: ``NAME=value`` lines (shell- and systemd-readable)."""
    sources = ", ".join(map(str, source)) if isinstance(source, list) else str(source)
    lines = [f"# acme-ra settings migrated from {sources} (acme-ra config from-acme-proxy)"]
    pairs = migration.environment() if isinstance(migration, Migration) else migration.env
    for name, value in pairs:
        if name in migration.comments:
            lines.append(f"# {migration.comments[name]}")
        shown = value if re.fullmatch(r"[\w@%+=:,./-]*", value) else shlex.quote(value)
        lines.append(f"{name}={shown}")
    lines += [
        "# acme-proxy had no equivalent of these; set them for production (docs/install.md):",
        "# ACME_RA_DATABASE_URL=postgresql+asyncpg://acme_ra:PASSWORD@db.example.com/acme_ra",
        "# ACME_RA_NATS_URL=nats://127.0.0.1:4222",
        "# ACME_RA_SECRET_KEY_FILE=/etc/acme-ra/secret.key",
    ]
    return "\n".join(lines) + "\n"


def write_secrets(migration: Migration | Combined) -> list[Path]:
    """Write the secret files, mode 0600 (their directory 0700 when created here)."""
    written = []
    for path, value in migration.secret_files.items():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # an existing file keeps no wider mode
        with os.fdopen(descriptor, "w") as handle:
            handle.write(value + "\n")
        written.append(path)
    return written
