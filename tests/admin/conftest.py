"""Fixtures of the admin tests: the admin app on a fresh database (in process), and the admin
service as its own process next to the running topology (``lab``), with an issued order."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from acme_ra.config import ENV_PREFIX, Settings, http_base
from acme_ra.db.migrate import upgrade
from acme_ra_admin.app import create_app
from acme_ra_admin.operations import AdminOperations
from acme_ra_tools.supervisor import settings_from_env
from tests.support import certbot
from tests.support.lab import Lab

# How long the admin service may take to answer /readyz (seconds).
ADMIN_READY_SECONDS = 30


def acme_ra(args: list[str], env: dict[str, str], check: bool = False) -> subprocess.CompletedProcess[str]:
    """``acme-ra ARGS`` as an operator runs it (``python -m acme_ra_tools.cli``)."""
    done = subprocess.run([sys.executable, "-m", "acme_ra_tools.cli", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"acme-ra {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@dataclass
class AdminApp:
    client: httpx.AsyncClient
    settings: Settings
    token: str
    ops: AdminOperations

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def admin_app(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[AdminApp]:
    """The admin app in process on an empty, migrated database, with one admin token."""
    settings = Settings(state_dir=tmp_path / "var", database_url=fresh_database_url, nats_url="",
                        signer_listen="127.0.0.1:9", trace_url_template="http://jaeger.test/trace/{trace_id}")
    settings.state_dir.mkdir()
    await asyncio.to_thread(upgrade, fresh_database_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        token = await app.state.ops.create_admin_token("test")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as client:
            yield AdminApp(client, settings, token.token, app.state.ops)


@dataclass
class AdminService:
    """The admin service process beside the lab, and what a test needs to use it."""

    lab: Lab
    url: str
    env: dict[str, str]
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def admin_service(lab: Lab) -> AdminService:
    """The admin service the topology started (as make dev does), with a token made by the CLI."""
    env = lab.topology.service_env("admin")  # an operator's shell: the admin's NATS user too
    url = http_base(settings_from_env(env).admin_listen)
    created = json.loads(acme_ra(["admin-token", "create", "--label", "tests", "--json"], env, check=True).stdout)
    deadline = time.monotonic() + ADMIN_READY_SECONDS
    while True:  # ready means the database; revocation also wants its NATS connection
        ready = httpx.get(f"{url}/readyz", timeout=5, trust_env=False)
        if ready.status_code == 200 and ready.json().get("nats") == "connected":
            return AdminService(lab, url, env, created["token"])
        assert time.monotonic() < deadline, f"the admin service is not connected to NATS: {ready.text}"
        time.sleep(0.2)


@dataclass
class Issued:
    """A certificate certbot got through the lab."""

    name: str
    order: dict[str, Any]
    certificate: dict[str, Any]


def issue(service: AdminService, name: str, workdir: Path) -> Issued:
    run = certbot.certonly(service.lab, [name], "http-01", workdir)
    assert run.returncode == 0, f"{run.describe()}\n{service.lab.logs()}"
    serial = format(run.chain()[0].serial_number, "x")
    with httpx.Client(base_url=service.url, headers=service.auth, trust_env=False, timeout=30) as client:
        certificate = client.get(f"/api/certificates/{serial}").raise_for_status().json()
        order = client.get(f"/api/orders/{certificate['order_id']}").raise_for_status().json()
    return Issued(name, order, certificate)


@pytest.fixture(scope="session")
def lab_env_with_admin(admin_service: AdminService) -> dict[str, str]:
    """The lab's environment plus the admin API's URL and token (remote CLI use)."""
    return admin_service.env | {f"{ENV_PREFIX}ADMIN_URL": admin_service.url, f"{ENV_PREFIX}ADMIN_TOKEN": admin_service.token}
