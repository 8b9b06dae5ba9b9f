"""Settings and a driver for the tests of the non-ACME upstream types (vault, command, lab): the
upstreams come from an ``ACME_RA_CONFIG_FILE`` the test writes, as an operator would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from acme_ra.config import Settings
from acme_ra.db.migrate import upgrade

SECRET = "backend-tests-sealing-secret-0123456789"


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


def backend_settings(tmp_path: Path, database_url: str, config_file: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_dir": tmp_path / "var",
        "database_url": database_url,
        "external_url": "https://ra.example.test",
        "nats_url": "",
        "upstream": "acme",
        "tls_cert_file": None,
        "tls_key_file": None,
        "config_file": config_file,
        "secret_key": SecretStr(SECRET),
        "secret_key_file": None,
        "upstream_directory_url": "",
        "upstream_proxy": "",
        "upstream_http_timeout_seconds": 10.0,
    }
    values.update(overrides)
    return Settings(**values)


def migrated(settings: Settings) -> str:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    return settings.effective_database_url


