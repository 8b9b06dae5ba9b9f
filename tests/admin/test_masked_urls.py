"""Passwords in URLs are masked wherever acme-ra prints or logs them: configuration errors,
`acme-ra config check`, `acme-ra db migrate`, the JSON log lines, the admin's NATS messages."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest

from acme_ra.config import ENV_PREFIX
from acme_ra.redaction import mask_url
from acme_ra.telemetry import JsonFormatter
from acme_ra_admin.operations import NatsLink, Unavailable
from tests.support.lab import base_environment

from .conftest import acme_ra

PASSWORD = "Hunter2-SECRET"
DATABASE_URL = f"postgresql+asyncpg://acme_ra_nobody:{PASSWORD}@127.0.0.1:1/nowhere"
NATS_URL = f"nats://natsuser:{PASSWORD}@127.0.0.1:1,nats://natsuser:{PASSWORD}@127.0.0.2:1"


@pytest.mark.parametrize("text, masked", [
    (DATABASE_URL, "postgresql+asyncpg://acme_ra_nobody:***@127.0.0.1:1/nowhere"),
    (NATS_URL, "nats://natsuser:***@127.0.0.1:1,nats://natsuser:***@127.0.0.2:1"),
    ("nats://s3cr3t-token@nats:4222", "nats://***@nats:4222"),
    ("postgresql+asyncpg://acme:p@ss:w@rd@db/acme", "postgresql+asyncpg://acme:***@db/acme"),
    ("cannot reach 'http://u:pw@proxy:3128' (refused)", "cannot reach 'http://u:***@proxy:3128' (refused)"),
    ("postgresql+asyncpg://postgres@127.0.0.1:5432/test", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    ("sqlite+aiosqlite:////var/lib/acme-ra/acme-ra.db", "sqlite+aiosqlite:////var/lib/acme-ra/acme-ra.db"),
    ("https://acme.example.org/acme/directory?x=a@b", "https://acme.example.org/acme/directory?x=a@b"),
])
def test_mask_url(text: str, masked: str) -> None:
    assert mask_url(text) == masked


@pytest.mark.parametrize("variable, value", [
    ("DATABASE_URL", f"mysql://acme:{PASSWORD}@db/acme"),  # refused: echoed, masked
    ("ADMIN_URL", f"ftp://admin:{PASSWORD}@admin"),
    ("ADMIN_TOKEN", PASSWORD),  # a secret's value is never echoed (valid or not)
])
def test_a_configuration_error_masks_the_password(tmp_path: Path, variable: str, value: str) -> None:
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path), f"{ENV_PREFIX}{variable}": value,
                                f"{ENV_PREFIX}LISTEN": "nowhere" if variable == "ADMIN_TOKEN" else "127.0.0.1:1"}
    done = acme_ra(["config", "check"], env)
    assert done.returncode == 2 and "invalid configuration" in done.stderr, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    if variable != "ADMIN_TOKEN":
        assert ":***@" in done.stderr


def test_config_check_masks_nats_credentials(tmp_path: Path) -> None:
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path), f"{ENV_PREFIX}NATS_URL": NATS_URL,
                                f"{ENV_PREFIX}DATABASE_URL": DATABASE_URL}
    done = acme_ra(["config", "check", "--json"], env, check=True)
    shown = json.loads(done.stdout)["settings"]
    assert shown["ACME_RA_NATS_URL"] == mask_url(NATS_URL) and shown["ACME_RA_DATABASE_URL"] == mask_url(DATABASE_URL)
    assert PASSWORD not in done.stdout + done.stderr


def test_migrate_says_one_masked_line(tmp_path: Path) -> None:
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path), f"{ENV_PREFIX}DATABASE_URL": DATABASE_URL}
    done = acme_ra(["db", "migrate"], env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("acme-ra: cannot migrate the database postgresql+asyncpg://acme_ra_nobody:***@")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_an_operator_command_on_an_unreachable_database_says_one_line(tmp_path: Path) -> None:
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path), f"{ENV_PREFIX}DATABASE_URL": DATABASE_URL}
    done = acme_ra(["eab", "list"], env)
    assert done.returncode == 1 and done.stderr.startswith("acme-ra: cannot reach the database (postgresql+asyncpg): ")
    assert len(done.stderr.strip().splitlines()) == 1 and PASSWORD not in done.stdout + done.stderr


def test_log_lines_mask_passwords_in_messages_fields_and_tracebacks() -> None:
    try:
        raise ConnectionError(f"cannot connect to {NATS_URL}")
    except ConnectionError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "nats: cannot connect to %s", (NATS_URL,),
                                   sys.exc_info())
    record.database = DATABASE_URL
    line = JsonFormatter("test").format(record)
    assert PASSWORD not in line
    event = json.loads(line)
    assert event["msg"] == f"nats: cannot connect to {mask_url(NATS_URL)}"
    assert event["database"] == mask_url(DATABASE_URL) and "natsuser:***@" in event["exc"]


async def test_the_admins_nats_errors_mask_the_password() -> None:
    link = NatsLink(NATS_URL)
    started = time.monotonic()
    with pytest.raises(Unavailable) as refused:
        await link.connect_once()
    # Refused at once: a command says so within seconds (nats-py's default retries took 120 s).
    assert time.monotonic() - started < 15
    assert PASSWORD not in refused.value.detail and "natsuser:***@" in refused.value.detail
    with pytest.raises(Unavailable) as not_connected:
        link.require()
    assert PASSWORD not in not_connected.value.detail
    await link.close()
