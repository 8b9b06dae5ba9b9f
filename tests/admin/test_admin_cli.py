"""``acme-ra`` as an operator runs it (a process), on a fresh database: db migrate, config check,
admin tokens, EAB keys, exit codes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from acme_ra.config import ENV_PREFIX
from tests.support import database
from tests.support.lab import base_environment

from .conftest import acme_ra


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A database of the lane's kind, migrated by `acme-ra db migrate`, shared by this module."""
    with database.fresh_database(tmp_path_factory.mktemp("cli-db")) as url:
        env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path_factory.mktemp("cli-var")),
                                    f"{ENV_PREFIX}DATABASE_URL": url}
        acme_ra(["db", "migrate"], env, check=True)
        yield env


def test_migrate_then_eab_keys_and_tokens(env: dict[str, str]) -> None:
    acme_ra(["migrate"], env, check=True)  # the alias; idempotent
    key = json.loads(acme_ra(["eab", "create", "--label", "web", "--allow", ".example.org,10.0.0.0/8",
                              "--deny", "www.example.org", "--no-wildcards", "--json"], env, check=True).stdout)
    assert key["kid"].startswith("kid-") and len(key["hmac_key"]) == 43
    assert key["policy"] == {"allow": [".example.org", "10.0.0.0/8"], "deny": ["www.example.org"], "wildcards": False}
    table = acme_ra(["eab", "list"], env, check=True).stdout
    assert key["kid"] in table and "unused" in table and key["hmac_key"] not in table
    human = acme_ra(["eab", "create", "--label", "people"], env, check=True).stdout
    assert "shown this once" in human and "--eab-kid kid-" in human
    assert acme_ra(["eab", "revoke", key["kid"]], env, check=True).stdout.strip() == f"EAB key {key['kid']} revoked."
    again = acme_ra(["eab", "revoke", key["kid"]], env)
    assert again.returncode == 1 and "already revoked" in again.stderr
    token = acme_ra(["admin-token", "create", "--label", "ops"], env, check=True)
    assert token.stdout.startswith("acmera_") and "shown this once" in token.stderr
    assert "ops" in acme_ra(["admin-token", "list"], env, check=True).stdout


@pytest.mark.parametrize("args, code, message", [
    (["eab", "create", "--profile", "nope"], 2, "is not one of ACME_RA_PROFILES"),
    (["eab", "create", "--allow", "10.0.0.0/33"], 2, "bad policy rule"),
    (["accounts", "show", "nope"], 3, "no account nope"),
    (["orders", "show", "nope"], 3, "no order nope"),
    (["certs", "show", "abcdef"], 3, "no certificate abcdef"),
    (["certs", "revoke", "nope"], 3, "no certificate nope"),
    (["certs", "revoke", "nope", "--reason", "certificateHold"], 2, "is not allowed"),
    (["queues", "status"], 1, "ACME_RA_NATS_URL is not set"),
    (["eab", "list", "--url", "http://127.0.0.1:9"], 2, "needs a token"),
    (["eab", "list", "--url", "http://127.0.0.1:9", "--token", "acmera_x"], 1, "cannot reach the admin API"),
    (["eab", "frobnicate"], 2, "No such command"),
])
def test_exit_codes(env: dict[str, str], args: list[str], code: int, message: str) -> None:
    done = acme_ra(args, env)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr


def test_without_the_schema_the_cli_says_to_migrate(fresh_database_url: str, tmp_path: Path) -> None:
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path), f"{ENV_PREFIX}DATABASE_URL": fresh_database_url}
    done = acme_ra(["eab", "list"], env)
    assert done.returncode == 1 and "acme-ra db migrate" in done.stderr


def test_config_check_masks_secrets(tmp_path: Path) -> None:
    env = base_environment() | {
        f"{ENV_PREFIX}STATE_DIR": str(tmp_path),
        f"{ENV_PREFIX}DATABASE_URL": "postgresql+asyncpg://acme:db-password@db.example.org/acme",
        f"{ENV_PREFIX}SECRET_KEY": "a-sealing-secret-of-some-length",
        f"{ENV_PREFIX}ADMIN_TOKEN": "acmera_secret-token",
        f"{ENV_PREFIX}UPSTREAM_PROXY": "http://proxyuser:proxy-password@proxy.example.org:3128",
    }
    done = acme_ra(["config", "check"], env, check=True)
    for secret in ("db-password", "a-sealing-secret", "acmera_secret-token", "proxy-password"):
        assert secret not in done.stdout + done.stderr
    assert "ACME_RA_DATABASE_URL" in done.stdout and "postgresql+asyncpg://acme:***@db.example.org/acme" in done.stdout
    assert "configuration is valid" in done.stderr
    shown = json.loads(acme_ra(["config", "check", "--json"], env, check=True).stdout)
    assert shown["valid"] is True and shown["settings"]["ACME_RA_SECRET_KEY"] == "********"
    assert shown["settings"]["ACME_RA_ADMIN_LISTEN"] == "127.0.0.1:9443"


@pytest.mark.parametrize("variable, value, message", [
    ("LISTEN", "nowhere", "ACME_RA_LISTEN='nowhere'"),
    ("ADMIN_LISTEN", "nowhere", "ACME_RA_ADMIN_LISTEN='nowhere'"),
    ("TRACE_URL_TEMPLATE", "http://jaeger/trace/", "must contain {trace_id}"),
    ("UPSTREAM", "acme", "ACME_RA_UPSTREAM_DIRECTORY_URL"),
])
def test_config_check_refuses_a_bad_configuration(tmp_path: Path, variable: str, value: str, message: str) -> None:
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path), f"{ENV_PREFIX}{variable}": value}
    done = acme_ra(["config", "check"], env)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_help_lists_every_command() -> None:
    done = acme_ra(["--help"], dict(os.environ), check=True)
    for command in ("dev", "migrate", "db", "config", "eab", "accounts", "orders", "certs", "upstream",
                    "queues", "admin-token", "secrets"):
        assert f"  {command} " in done.stdout
