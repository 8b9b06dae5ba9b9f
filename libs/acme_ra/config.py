"""Configuration from ``ACME_RA_*`` environment variables (pydantic-settings).

One settings class, made of sections (``acme_ra.settings``); every service reads the fields it needs. ``load_settings`` turns a
validation error into one line that names the variable, and exits.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from acme_ra.db import multihost
from acme_ra.settings.acme import AcmeSettings
from acme_ra.settings.section import ENV_PREFIX, http_base, normal_issuer_domain, parse_host_port
from acme_ra.settings.upstream import UpstreamSettings
from acme_ra.settings.validation import ValidationSettings

__all__ = ["ENV_PREFIX", "Settings", "get_settings", "http_base", "normal_issuer_domain", "parse_host_port"]

# ACME_RA_* variables that are not settings of the services: the test suite's (ACME_RA_TEST_*,
# ACME_RA_HYPOTHESIS_*) and the benchmark's (ACME_RA_BENCH_*). Never reported as unknown.
NOT_SETTINGS_PREFIXES = (ENV_PREFIX + "TEST_", ENV_PREFIX + "HYPOTHESIS_", ENV_PREFIX + "BENCH_")
# What the signer gives an external-command upstream's programs (upstream/command.py): a script
# that runs acme-ra itself must not be warned about them.
COMMAND_UPSTREAM_VARIABLES = frozenset(ENV_PREFIX + name for name in (
    "ORDER_ID", "NAMES", "PROFILE", "PROVISIONER", "SERIAL", "REASON"))


class Settings(UpstreamSettings, ValidationSettings, AcmeSettings):
    """Every ``ACME_RA_*`` variable: the common ones here, the rest in their sections
    (acme_ra.settings). Names are a documented contract (README, docs/configuration.md)."""

    # ACME_RA_STATE_DIR: lab CA, embedded NATS data, SQLite file, generated TLS material.
    state_dir: Path = Path("./var")
    # ACME_RA_STRICT_CONFIG: an ACME_RA_* variable that is no setting (a misspelling) stops every
    # service and acme-ra command with one line (exit 2); false: a warning naming the closest setting.
    strict_config: bool = False
    # ACME_RA_DATABASE_URL: SQLAlchemy async URL; default SQLite under the state dir. PostgreSQL
    # behind a failover (Patroni, CloudNativePG): several hosts, libpq's way,
    # postgresql+asyncpg://user@db1:5432,db2:5432/acme?target_session_attrs=read-write; the
    # services connect to whichever is the primary (read-write is the default with several hosts).
    database_url: str = ""
    # ACME_RA_NATS_URL: unset means make dev (acme_ra_tools.dev) starts an embedded nats-server.
    nats_url: str = ""
    # ACME_RA_NATS_STREAM_REPLICAS: copies of the job and event streams in a NATS cluster (3 for
    # R3, at most 5); the frontend and the signer create the streams with it, or scale existing
    # ones in place (their consumers follow). Unset: new streams get 1, existing ones keep theirs.
    nats_stream_replicas: int = Field(1, ge=1, le=5)
    # ACME_RA_NATS_USER / ACME_RA_NATS_PASSWORD (or _FILE): this service's NATS user (each service
    # its own, with only the permissions its job needs: acme_ra.natsauth, docs/security.md); unset:
    # connect without credentials (a NATS without auth). make dev and make lab set them.
    nats_user: str = ""
    nats_password: SecretStr | None = None
    nats_password_file: Path | None = None
    # ACME_RA_NATS_TLS_CA: PEM roots trusted for NATS's TLS (tls:// URLs, or a server that requires
    # TLS); unset = the system's roots. ACME_RA_NATS_TLS_CERT_FILE / _KEY_FILE: a client certificate.
    nats_tls_ca: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    # ACME_RA_LISTEN: the public ACME listener (frontend).
    listen: str = "127.0.0.1:8443"
    # ACME_RA_EXTERNAL_URL: the base URL clients see (behind a load balancer: its URL).
    external_url: str = "https://localhost:8443"
    # ACME_RA_TLS_CERT_FILE / ACME_RA_TLS_KEY_FILE: bring your own; unset = issued by the lab CA.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # ACME_RA_CONFIG_FILE: optional YAML or TOML file; its `upstreams` section declares named
    # upstreams selected per profile or provisioner (docs/upstream.md). Env vars suffice for one.
    # Its `client_networks` section: who may use the ACME API (docs/policy.md).
    config_file: Path | None = None
    # ACME_RA_METRICS_LISTEN: the frontend's Prometheus /metrics listener (empty: off).
    metrics_listen: str = "127.0.0.1:9123"
    # ACME_RA_VALIDATOR_LISTEN / ACME_RA_SIGNER_LISTEN: health and metrics of the workers.
    validator_listen: str = "127.0.0.1:9124"
    signer_listen: str = "127.0.0.1:9125"
    # ACME_RA_ADMIN_LISTEN: the admin API (/api/) and web console (python -m acme_ra_admin);
    # never the public ACME port. Plain HTTP unless ACME_RA_ADMIN_TLS_CERT_FILE is set: then keep
    # it on loopback or behind a TLS proxy.
    admin_listen: str = "127.0.0.1:9443"
    # ACME_RA_ADMIN_TLS_CERT_FILE / ACME_RA_ADMIN_TLS_KEY_FILE: serve the admin listener over
    # HTTPS with this certificate (PEM, chain after the leaf) and key; unset: plain HTTP.
    admin_tls_cert_file: Path | None = None
    admin_tls_key_file: Path | None = None
    # ACME_RA_ADMIN_TLS_CA: PEM roots the `acme-ra` command trusts for an https ACME_RA_ADMIN_URL
    # (e.g. a private CA's root); unset = the system's roots.
    admin_tls_ca: Path | None = None
    # ACME_RA_ADMIN_URL / ACME_RA_ADMIN_TOKEN: where the `acme-ra` command finds the admin API and
    # the bearer token it sends there; unset URL: the command works on the database directly.
    admin_url: str = ""
    admin_token: SecretStr | None = None
    # ACME_RA_TRACE_URL_TEMPLATE: the console's link to an order's trace, "{trace_id}" replaced,
    # e.g. http://localhost:16686/trace/{trace_id} (Jaeger); empty: no link.
    trace_url_template: str = ""
    # ACME_RA_RETENTION_DAYS: how long finished orders, authorizations and challenges are kept
    # (an order with a certificate: this long after the certificate expired; revoked ones are
    # kept); the signers purge hourly, one at a time (acme_ra.db.retention). 0: keep everything.
    retention_days: int = Field(30, ge=0, le=36500)
    # ACME_RA_PURGE_SHARE: the part of its time a purge may keep the database busy; it rests
    # the remainder between batches (1: as fast as it can).
    purge_share: float = Field(0.25, gt=0, le=1)
    # ACME_RA_DB_POOL_SIZE: connections per service process.
    db_pool_size: int = Field(10, gt=0)
    # ACME_RA_SECRET_KEY / ACME_RA_SECRET_KEY_FILE: seals secrets at rest (EAB HMAC keys, the
    # upstream account key, the nonce HMAC key), a key derived per purpose, and keys the admin
    # console's sessions. Unset: a key is created once in STATE_DIR/secret.key (labs only:
    # replicas on several machines must share one key).
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    # ACME_RA_LOG_LEVEL
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator(
        "listen", "validator_listen", "signer_listen", "metrics_listen", "admin_listen", "upstream_http01_listen"
    )
    @classmethod
    def _check_listen(cls, value: str) -> str:
        if value:
            parse_host_port(value)
        return value

    @field_validator("external_url")
    @classmethod
    def _check_external_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://acme.example.org")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("admin_url")
    @classmethod
    def _check_admin_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError("must be an absolute http(s) URL such as http://127.0.0.1:9443")
        return value.rstrip("/")

    @field_validator("trace_url_template")
    @classmethod
    def _check_trace_url_template(cls, value: str) -> str:
        if value and "{trace_id}" not in value:
            raise ValueError("must contain {trace_id}, e.g. http://localhost:16686/trace/{trace_id}")
        return value


    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must start with postgresql+asyncpg:// or sqlite+aiosqlite://")
        return value


    @field_validator("secret_key_file")
    @classmethod
    def _check_secret_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist")
        return value


    @field_validator("database_url")
    @classmethod
    def _check_database_hosts(cls, value: str) -> str:
        multihost.sqlalchemy_url(value)  # a host list or target_session_attrs it cannot read
        return value

    @property
    def stream_replicas(self) -> int | None:
        """ACME_RA_NATS_STREAM_REPLICAS when set; None (create with 1, keep what exists) when not."""
        return self.nats_stream_replicas if "nats_stream_replicas" in self.model_fields_set else None

    @model_validator(mode="after")
    def _check_nats_credentials(self) -> Settings:
        if self.nats_password is not None and self.nats_password_file is not None:
            raise ValueError("set ACME_RA_NATS_PASSWORD or ACME_RA_NATS_PASSWORD_FILE, not both")
        has_password = self.nats_password is not None or self.nats_password_file is not None
        if bool(self.nats_user) != has_password:
            raise ValueError("ACME_RA_NATS_USER and ACME_RA_NATS_PASSWORD(_FILE) go together")
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("ACME_RA_NATS_TLS_CERT_FILE and ACME_RA_NATS_TLS_KEY_FILE go together")
        for path in (self.nats_password_file, self.nats_tls_ca, self.nats_tls_cert_file, self.nats_tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"NATS file {path} does not exist")
        return self


    @model_validator(mode="after")
    def _check_admin_tls(self) -> Settings:
        if (self.admin_tls_cert_file is None) != (self.admin_tls_key_file is None):
            raise ValueError("ACME_RA_ADMIN_TLS_CERT_FILE and ACME_RA_ADMIN_TLS_KEY_FILE go together")
        for path in (self.admin_tls_cert_file, self.admin_tls_key_file, self.admin_tls_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"admin TLS file {path} does not exist")
        return self

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("ACME_RA_TLS_CERT_FILE and ACME_RA_TLS_KEY_FILE go together")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        return self

    # Derived values -------------------------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return multihost.sqlalchemy_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.state_dir / 'acme-ra.db').resolve()}"


    def sealing_secret(self) -> bytes:
        """The secret that seals secrets at rest (see ACME_RA_SECRET_KEY)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        if self.secret_key_file is not None:
            return self.secret_key_file.read_bytes().strip()
        path = self.state_dir / "secret.key"
        if not path.exists():
            import os
            import secrets as _secrets

            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(_secrets.token_urlsafe(32) + "\n")
        return path.read_bytes().strip()

    @property
    def lab_ca_dir(self) -> Path:
        return self.state_dir / "lab-ca"

    @property
    def admin_base_url(self) -> str:
        """The admin listener's own URL: https when it has a certificate (ACME_RA_ADMIN_TLS_*)."""
        base = http_base(self.admin_listen)
        return "https" + base.removeprefix("http") if self.admin_tls_cert_file else base

    @property
    def frontend_tls_paths(self) -> tuple[Path, Path]:
        """The frontend's certificate and key: the configured pair or the lab-issued one."""
        if self.tls_cert_file and self.tls_key_file:
            return self.tls_cert_file, self.tls_key_file
        return self.state_dir / "tls" / "frontend.crt", self.state_dir / "tls" / "frontend.key"


def _one_line(error: ValidationError) -> str:
    """The first error as one line; a secret's value is never shown, a URL's password masked."""
    from acme_ra.redaction import mask_url

    first = error.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "__root__"]
    name = (ENV_PREFIX + loc[0].upper()) if loc else "configuration"
    message = mask_url(first.get("msg", "invalid").removeprefix("Value error, "))
    value = first.get("input")
    field = Settings.model_fields.get(loc[0]) if loc else None
    secret = field is not None and "SecretStr" in str(field.annotation)
    shown = f"={mask_url(repr(value))}" if loc and isinstance(value, (str, int)) and not secret else ""
    return f"acme-ra: invalid configuration: {name}{shown}: {message}"


def setting_names() -> list[str]:
    """Every variable the settings read: ``ACME_RA_<FIELD>``."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``ACME_RA_*`` variable that is no setting, naming the closest one."""
    known = setting_names()
    lines = []
    for variable in sorted(environ):
        name = variable.upper()
        if (not name.startswith(ENV_PREFIX) or name in known or name in COMMAND_UPSTREAM_VARIABLES
                or name.startswith(NOT_SETTINGS_PREFIXES)):
            continue
        closest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {closest[0]}?" if closest else "see docs/configuration.md"
        lines.append(f"unknown variable {variable} ({hint})")
    return lines


@functools.cache
def get_settings() -> Settings:
    """The process's settings; on invalid configuration print one line and exit 2. An unknown
    ACME_RA_* variable is a warning on stderr (one line each), or that error under
    ACME_RA_STRICT_CONFIG=true."""
    try:
        settings = Settings()
    except ValidationError as error:
        print(_one_line(error), file=sys.stderr)
        raise SystemExit(2) from None
    unknown = unknown_variables(os.environ)
    if unknown and settings.strict_config:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        print(f"acme-ra: invalid configuration: {unknown[0]}{more}; ACME_RA_STRICT_CONFIG=true refuses it",
              file=sys.stderr)
        raise SystemExit(2)
    for line in unknown:
        print(f"acme-ra: warning: {line}", file=sys.stderr)
    return settings
