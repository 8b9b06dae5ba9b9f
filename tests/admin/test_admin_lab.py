"""The admin service and ``acme-ra`` beside the real topology: issued orders, revocation
through the signer's NATS RPC (so the upstream is told), upstream and queue status, EAB keys
that certbot registers with."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from acme_ra.config import ENV_PREFIX
from tests.support import certbot

from .conftest import AdminService, acme_ra, issue

pytestmark = pytest.mark.integration


def api(service: AdminService) -> httpx.Client:
    return httpx.Client(base_url=service.url, headers=service.auth, trust_env=False, timeout=60)


def test_an_issued_order_in_the_api_and_the_cli(admin_service: AdminService, tmp_path: Path) -> None:
    issued = issue(admin_service, "admin-order.localhost", tmp_path)
    order = issued.order
    assert order["status"] == "valid" and order["names"] == ["admin-order.localhost"]
    assert order["certificate_id"] == issued.certificate["id"]
    assert order["trace_id"] is None or len(order["trace_id"]) == 32  # None: the lab traces nothing
    assert [a["status"] for a in order["authorizations"]] == ["valid"]
    assert any(c["type"] == "http-01" and c["status"] == "valid" for c in order["authorizations"][0]["challenges"])
    with api(admin_service) as client:
        valid = client.get("/api/orders", params={"status": "valid", "account": order["account_id"]}).json()
    assert order["id"] in [o["id"] for o in valid]
    # The CLI on the database and through the API say the same.
    direct = json.loads(acme_ra(["orders", "show", order["id"], "--json"], admin_service.env, check=True).stdout)
    remote = json.loads(acme_ra(["orders", "show", order["id"], "--json", "--url", admin_service.url,
                                 "--token", admin_service.token], admin_service.env, check=True).stdout)
    assert direct == remote == order
    table = acme_ra(["orders", "list", "--account", order["account_id"]], admin_service.env, check=True).stdout
    assert order["id"] in table and "valid" in table


def test_revocation_through_the_api_goes_to_the_signer(admin_service: AdminService, tmp_path: Path) -> None:
    issued = issue(admin_service, "admin-revoke.localhost", tmp_path)
    with api(admin_service) as client:
        revoked = client.post(f"/api/certificates/{issued.certificate['id']}/revoke", json={"reason": "keyCompromise"})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["certificate"]["status"] == "revoked"
        assert revoked.json()["certificate"]["revocation_reason"] == 1
        again = client.post(f"/api/certificates/{issued.certificate['id']}/revoke", json={"reason": 1})
        assert again.status_code == 409
        refused = client.post(f"/api/certificates/{issued.certificate['id']}/revoke", json={"reason": 6})
        assert refused.status_code == 400 and "not allowed" in refused.json()["detail"]
    # The signer revoked upstream and recorded it (its responder logs one event per request).
    events = [json.loads(line) for line in (admin_service.lab.topology.log_dir / "signer.log").read_text().splitlines()
              if line.startswith("{")]
    assert [(e["outcome"], e["reason"]) for e in events
            if e.get("certificate_id") == issued.certificate["id"] and e["msg"].startswith("revoke:")] == [("revoked", 1)]


def test_revocation_from_the_cli_by_serial(admin_service: AdminService, tmp_path: Path) -> None:
    issued = issue(admin_service, "admin-cli-revoke.localhost", tmp_path)
    serial = issued.certificate["serial"]
    done = acme_ra(["certs", "revoke", serial, "--reason", "superseded"], admin_service.env, check=True)
    assert f"Certificate {serial} revoked (reason 4)." in done.stdout
    shown = json.loads(acme_ra(["certs", "show", serial, "--json"], admin_service.env, check=True).stdout)
    assert shown["status"] == "revoked" and shown["revocation_reason"] == 4
    again = acme_ra(["certs", "revoke", serial], admin_service.env)
    assert again.returncode == 1 and "already revoked" in again.stderr
    missing = acme_ra(["certs", "revoke", "0123abcd"], admin_service.env)
    assert missing.returncode == 3 and "no certificate" in missing.stderr


def test_upstream_and_queue_status(admin_service: AdminService) -> None:
    with api(admin_service) as client:
        upstream = client.get("/api/upstream").json()
        queues = client.get("/api/queues").json()
    assert upstream["signer"]["ready"] is True and upstream["upstream"] == "lab"
    assert queues["reachable"] is True and queues["error"] is None
    assert {c["name"] for c in queues["consumers"]} == {"validator", "signer"}
    status = acme_ra(["upstream", "status"], admin_service.env)
    assert status.returncode == 0 and "signer    ready" in status.stdout, status.stderr
    backlog = acme_ra(["queues", "status", "--json"], admin_service.env, check=True)
    assert {c["name"] for c in json.loads(backlog.stdout)["consumers"]} == {"validator", "signer"}


def test_the_cli_through_the_api_with_a_wrong_token(admin_service: AdminService) -> None:
    env = admin_service.env | {f"{ENV_PREFIX}ADMIN_URL": admin_service.url, f"{ENV_PREFIX}ADMIN_TOKEN": "acmera_wrong"}
    done = acme_ra(["eab", "list"], env)
    assert done.returncode == 4 and "admin bearer token" in done.stderr
    assert "unauthorized request" in (admin_service.lab.topology.log_dir / "admin.log").read_text()


def test_certbot_registers_with_an_eab_key_from_the_cli(admin_service: AdminService, tmp_path: Path) -> None:
    key = json.loads(acme_ra(["eab", "create", "--label", "certbot", "--allow", ".localhost", "--json"],
                             admin_service.env, check=True).stdout)
    assert set(key) >= {"kid", "hmac_key"}
    lab = admin_service.lab
    args = [str(certbot.CERTBOT), "register", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
            "--server", lab.directory_url, "--eab-kid", key["kid"], "--eab-hmac-key", key["hmac_key"],
            "--config-dir", str(tmp_path / "config"), "--work-dir", str(tmp_path / "work"),
            "--logs-dir", str(tmp_path / "logs")]
    done = subprocess.run(args, env=certbot.trust_environment(lab.ca_bundle), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    keys = {k["kid"]: k for k in json.loads(acme_ra(["eab", "list", "--json"], admin_service.env, check=True).stdout)}
    assert keys[key["kid"]]["status"] == "bound" and keys[key["kid"]]["account_id"]
    account = json.loads(acme_ra(["accounts", "show", keys[key["kid"]]["account_id"], "--json"],
                                 admin_service.env, check=True).stdout)
    assert account["eab_kid"] == key["kid"] and account["status"] == "valid"
