"""The rules in force as the operator sees them: GET /api/policy, the console's Policy page and
``acme-ra policy show`` (the identifier policy and the client networks)."""

from __future__ import annotations

import json
from pathlib import Path

from acme_ra.config import ENV_PREFIX
from tests.support.lab import base_environment

from .conftest import AdminApp, acme_ra
from .test_admin_console import log_in

RULES = """\
client_networks:
  10.1.0.0/16: [.physics.example.edu]
  2001:db8:5::/48: {allow: [.hpc.example.edu], deny: [login.hpc.example.edu], wildcards: false}
  192.0.2.0/24: ["<b>.example.edu"]
"""


def configure(admin_app: AdminApp, tmp_path: Path, text: str) -> Path:
    path = tmp_path / "acme-ra.yaml"
    path.write_text(text)
    admin_app.ops.settings = admin_app.settings.model_copy(update={
        "config_file": path, "policy_client_networks": "198.51.100.0/24", "policy_allow": ".example.edu",
        "policy_wildcards": False})
    return path


async def test_api_shows_the_identifier_policy_and_client_networks(admin_app: AdminApp, tmp_path: Path) -> None:
    assert (await admin_app.client.get("/api/policy")).status_code == 401
    open_ = (await admin_app.client.get("/api/policy", headers=admin_app.auth)).json()
    assert open_["client_networks"] == {"restricted": False, "networks": [], "config_file": None, "error": None}
    path = configure(admin_app, tmp_path, RULES)
    body = (await admin_app.client.get("/api/policy", headers=admin_app.auth)).json()
    assert body["identifiers"] == {"allow": [".example.edu"], "deny": [], "wildcards": False}
    assert body["client_networks"]["restricted"] is True and body["client_networks"]["config_file"] == str(path)
    assert body["client_networks"]["networks"] == [
        {"network": "10.1.0.0/16", "allow": [".physics.example.edu"], "deny": [], "wildcards": True,
         "origin": "ACME_RA_CONFIG_FILE"},
        {"network": "192.0.2.0/24", "allow": ["<b>.example.edu"], "deny": [], "wildcards": True,
         "origin": "ACME_RA_CONFIG_FILE"},
        {"network": "198.51.100.0/24", "allow": [], "deny": [], "wildcards": True,
         "origin": "ACME_RA_POLICY_CLIENT_NETWORKS"},
        {"network": "2001:db8:5::/48", "allow": [".hpc.example.edu"], "deny": ["login.hpc.example.edu"],
         "wildcards": False, "origin": "ACME_RA_CONFIG_FILE"},
    ]
    # A file that does not load: said, not hidden (the frontends keep the rules they had).
    path.write_text("client_networks:\n  10.1.0.0/99: []\n")
    broken = (await admin_app.client.get("/api/policy", headers=admin_app.auth)).json()["client_networks"]
    assert broken["restricted"] is None and broken["networks"] == []
    assert broken["error"] == (f"invalid configuration: ACME_RA_CONFIG_FILE ({path}): client_networks.10.1.0.0/99: "
                               "'10.1.0.0/99' is not a CIDR such as 10.1.0.0/16")


async def test_console_policy_page(admin_app: AdminApp, tmp_path: Path) -> None:
    assert (await admin_app.client.get("/policy")).status_code == 303  # a login first
    await log_in(admin_app)
    page = await admin_app.client.get("/policy")
    assert page.status_code == 200 and "every address may use the ACME API" in page.text
    path = configure(admin_app, tmp_path, RULES)
    text = (await admin_app.client.get("/policy")).text
    assert 'href="/policy" class="current"' in text
    for shown in ("<code>10.1.0.0/16</code>", "<code>.physics.example.edu</code>", "<code>2001:db8:5::/48</code>",
                  "<code>login.hpc.example.edu</code>", "ACME_RA_POLICY_CLIENT_NETWORKS",
                  "any name the policy allows", f"<code>{path}</code>"):
        assert shown in text, shown
    assert "<b>.example.edu" not in text and "&lt;b&gt;.example.edu" in text  # escaped
    path.write_text("client_networks: [\n")
    text = (await admin_app.client.get("/policy")).text
    assert 'id="client-networks-error"' in text and "not valid YAML" in text
    assert "The frontends keep the rules they loaded before this change." in text


def test_cli_policy_show(tmp_path: Path) -> None:
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path / "var")}
    shown = acme_ra(["policy", "show"], env, check=True).stdout
    assert "none configured: every address may use the ACME API" in shown
    rules = tmp_path / "acme-ra.toml"
    rules.write_text('[client_networks]\n"10.1.0.0/16" = [".physics.example.edu"]\n')
    env |= {f"{ENV_PREFIX}CONFIG_FILE": str(rules), f"{ENV_PREFIX}POLICY_CLIENT_NETWORKS": "::1"}
    table = acme_ra(["policy", "show"], env, check=True).stdout
    assert "only the networks below may use the ACME API" in table
    assert [line.split()[:2] for line in table.splitlines() if line.startswith(("10.1.", "::1"))] == [
        ["10.1.0.0/16", ".physics.example.edu"], ["::1/128", "any"]]
    as_json = json.loads(acme_ra(["policy", "show", "--json"], env, check=True).stdout)
    assert [n["network"] for n in as_json["client_networks"]["networks"]] == ["10.1.0.0/16", "::1/128"]
    # A bad file: exit 2, the one line, and `config check` says so too.
    rules.write_text('[client_networks]\n"10.1.0.0/16" = [".physics.example.edu", "10.0.0.0/99"]\n')
    done = acme_ra(["policy", "show"], env)
    assert done.returncode == 2 and "unknown: the file does not load" in done.stdout
    assert done.stderr.strip() == (
        f"acme-ra: invalid configuration: ACME_RA_CONFIG_FILE ({rules}): client_networks.10.1.0.0/16: bad identifier "
        "rule: '10.0.0.0/99' does not appear to be an IPv4 or IPv6 network (the frontends keep the rules they "
        "loaded before)")
    check = acme_ra(["config", "check"], env)
    assert check.returncode == 2 and f"ACME_RA_CONFIG_FILE ({rules}): client_networks.10.1.0.0/16" in check.stderr
