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
    from .conftest import signer_settings

    return signer_settings(tmp_path, database_url, **{"config_file": config_file, "secret_key": SecretStr(SECRET),
                                                      "upstream_directory_url": "", **overrides})


def migrated(settings: Settings) -> str:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    return settings.effective_database_url


