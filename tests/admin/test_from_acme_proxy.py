"""``acme-ra config from-acme-proxy``: the seed's own example ca.json and variants of it become an
environment file that ``acme-ra config check`` accepts; secrets never reach stdout; what does not
carry over is one line each on stderr; a bad ca.json is one line and exit 2."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from acme_ra.config import ENV_PREFIX
from acme_ra_admin.acme_proxy_migration import migrate
from tests.support.doc_recipes import recipe
from tests.support.lab import base_environment

from .conftest import acme_ra

ROOT = Path(__file__).resolve().parents[2]
# The seed's example, as esnet/acme-proxy ships it (empty strings for the operator to fill): a copy
# of ../shared/reference/acme-proxy-ca.json, so the tests need no file outside the checkout.
SEED_CA_JSON = Path(__file__).parent / "data" / "acme-proxy-ca.json"
EAB_HMAC_KEY = "c2VjcmV0LWVhYi1obWFjLWtleS1mcm9tLWluY29tbW9u"
TSIG_SECRET = "dHNpZy1zZWNyZXQtb2YtdGhlLXZhbGlkYXRpb24tem9uZQ=="


def seed() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SEED_CA_JSON.read_text())
    return document


def filled(**dns01: Any) -> dict[str, Any]:
    """The seed's example as an operator fills it for InCommon, with ``dns01_txt`` given."""
    document = copy.deepcopy(seed())
    config = document["authority"]["config"]
    config.update(ca_url="https://acme.sectigo.com/v2/InCommonRSAOV", account_email="pki@example.edu",
                  eab_kid="kid-from-sectigo", eab_hmac_key=EAB_HMAC_KEY)
    config["dns01_txt"] = dns01 or config["dns01_txt"]
    return document


RFC2136 = {"provider": "rfc2136", "dns_servers": ["192.0.2.53", "[2001:db8::53]:5353"],
           "env_vars": {"RFC2136_NAMESERVER": "ns1.example.edu", "RFC2136_TSIG_KEY": "acme-ra-key.",
                        "RFC2136_TSIG_SECRET": TSIG_SECRET, "RFC2136_TSIG_ALGORITHM": "hmac-sha256.",
                        "RFC2136_PROPAGATION_TIMEOUT": "300"}}


def write(tmp_path: Path, document: Any, name: str = "ca.json") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document, indent=2))
    return path


def env_lines(text: str) -> dict[str, str]:
    """The environment file as a shell reads it."""
    pairs = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = shlex.split(value)[0] if value else ""
    return pairs


def run(path: Path, *options: str) -> tuple[int, dict[str, str], list[str], str]:
    done = acme_ra(["config", "from-acme-proxy", str(path), *options], base_environment())
    assert "Traceback" not in done.stderr
    notes = done.stderr.splitlines()
    assert all(note.startswith("acme-ra: ") for note in notes), notes
    return done.returncode, env_lines(done.stdout), notes, done.stdout


def test_the_copy_is_the_seeds_example() -> None:
    # ../shared beside the main checkout; a worktree sits one level deeper.
    candidates = [parent / "shared" / "reference" / "acme-proxy-ca.json" for parent in ROOT.parents[:2]]
    shared = next((path for path in candidates if path.is_file()), None)
    if shared is None:
        pytest.skip("../shared/reference/acme-proxy-ca.json: not beside this checkout")
    assert json.loads(shared.read_text()) == seed()


def test_the_seeds_own_example(tmp_path: Path) -> None:
    code, env, notes, _ = run(SEED_CA_JSON)
    assert code == 0
    assert env == {
        "ACME_RA_LISTEN": "0.0.0.0:443", "ACME_RA_EXTERNAL_URL": "https://acmeproxy.example.com",
        "ACME_RA_UPSTREAM": "acme", "ACME_RA_UPSTREAM_DIRECTORY_URL": "",
        "ACME_RA_UPSTREAM_AUTHZ_STRATEGY": "prevalidated", "ACME_RA_METRICS_LISTEN": "0.0.0.0:9234",
        "ACME_RA_PROVISIONERS": "acme",
    }
    # Empty ca_url, and the two members with no equivalent (db, tls); nothing about the
    # step-ca defaults (claims, empty options, logger, template, backdate).
    assert len(notes) == 3, notes
    assert any("ca_url is empty: set ACME_RA_UPSTREAM_DIRECTORY_URL" in n for n in notes)
    assert any(n.startswith("acme-ra: db: ") for n in notes) and any(n.startswith("acme-ra: tls: ") for n in notes)


def test_rfc2136_with_secrets_dir_passes_config_check(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    code, env, notes, stdout = run(write(tmp_path, filled(**RFC2136)), "--secrets-dir", str(secrets))
    assert code == 0
    assert EAB_HMAC_KEY not in stdout and TSIG_SECRET not in stdout
    assert env["ACME_RA_UPSTREAM_DIRECTORY_URL"] == "https://acme.sectigo.com/v2/InCommonRSAOV"
    assert env["ACME_RA_UPSTREAM_EMAIL"] == "pki@example.edu" and env["ACME_RA_UPSTREAM_EAB_KID"] == "kid-from-sectigo"
    assert env["ACME_RA_UPSTREAM_AUTHZ_STRATEGY"] == "dns-01"
    assert env["ACME_RA_UPSTREAM_DNS_RFC2136_SERVER"] == "ns1.example.edu:53"
    assert env["ACME_RA_UPSTREAM_DNS_TSIG_KEY_NAME"] == "acme-ra-key."
    assert env["ACME_RA_UPSTREAM_DNS_TSIG_ALGORITHM"] == "hmac-sha256"
    assert env["ACME_RA_UPSTREAM_DNS_NAMESERVERS"] == "192.0.2.53:53,[2001:db8::53]:5353"
    assert env["ACME_RA_UPSTREAM_DNS_PROPAGATION_TIMEOUT_SECONDS"] == "300"
    for setting, secret in (("ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE", EAB_HMAC_KEY),
                            ("ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE", TSIG_SECRET)):
        path = Path(env[setting])
        assert path.parent == secrets.resolve() and path.read_text().strip() == secret
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not any("write it to" in n for n in notes) and sum("wrote " in n for n in notes) == 2

    check = acme_ra(["config", "check", "--json"],
                    base_environment() | env | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path / "var")})
    report = json.loads(check.stdout)
    assert check.returncode == 0 and report["valid"], check.stderr
    assert report["settings"]["ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE"] == env["ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE"]


def test_without_secrets_dir_the_notes_name_the_files_to_write(tmp_path: Path) -> None:
    code, env, notes, stdout = run(write(tmp_path, filled(**RFC2136)))
    assert code == 0
    assert EAB_HMAC_KEY not in stdout + "".join(notes) and TSIG_SECRET not in stdout + "".join(notes)
    assert env["ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE"] == "/etc/acme-ra/upstream-eab-hmac.key"
    assert env["ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE"] == "/etc/acme-ra/upstream-tsig.secret"
    assert any("eab_hmac_key: write it to /etc/acme-ra/upstream-eab-hmac.key (mode 0600)" in n for n in notes)
    assert any("RFC2136_TSIG_SECRET: write it to /etc/acme-ra/upstream-tsig.secret" in n for n in notes)
    assert not (tmp_path / "secrets").exists()


def test_rfc2136_defaults_and_leftovers() -> None:
    dns01 = {"provider": "RFC2136", "env_vars": {"RFC2136_NAMESERVER": "192.0.2.1:5353", "RFC2136_TSIG_KEY": "k",
                                                 "RFC2136_TSIG_SECRET_FILE": "/run/secrets/tsig",
                                                 "RFC2136_TTL": "60", "RFC2136_SOMETHING": "x"}}
    migration = migrate(filled(**dns01))
    env = dict(migration.environment())
    assert env["ACME_RA_UPSTREAM_DNS_RFC2136_SERVER"] == "192.0.2.1:5353"
    assert env["ACME_RA_UPSTREAM_DNS_TSIG_ALGORITHM"] == "hmac-sha1"  # lego's default, kept for the same key
    assert env["ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE"] == "/run/secrets/tsig"
    assert [n for n in migration.notes if "RFC2136_" in n] == [
        "dns01_txt.env_vars.RFC2136_SOMETHING: not used by acme-ra's rfc2136 publisher, ignored"]


def test_a_provider_acme_ra_lacks_names_the_hook_to_write(tmp_path: Path) -> None:
    route53 = {"provider": "route53", "dns_servers": [],
               "env_vars": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "aws-secret-value"}}
    code, env, notes, stdout = run(write(tmp_path, filled(**route53)))
    assert code == 0
    assert env["ACME_RA_UPSTREAM_AUTHZ_STRATEGY"] == "dns-01"
    assert env["ACME_RA_UPSTREAM_DNS_HOOK"] == "/etc/acme-ra/dns-hook"
    hook_notes = [n for n in notes if "route53" in n]
    assert len(hook_notes) == 1
    assert "write the hook /etc/acme-ra/dns-hook, called `add|remove FQDN VALUE`" in hook_notes[0]
    assert "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in hook_notes[0]
    assert "aws-secret-value" not in stdout + "".join(notes)


def test_legos_exec_provider_becomes_the_hook() -> None:
    migration = migrate(filled(provider="exec", env_vars={"EXEC_PATH": "/usr/local/bin/dns.sh"}))
    assert dict(migration.environment())["ACME_RA_UPSTREAM_DNS_HOOK"] == "/usr/local/bin/dns.sh"
    assert any("present|cleanup" in n for n in migration.notes)


def test_no_dns01_txt_is_prevalidated() -> None:
    document = filled()
    del document["authority"]["config"]["dns01_txt"]
    env = dict(migrate(document).environment())
    assert env["ACME_RA_UPSTREAM_AUTHZ_STRATEGY"] == "prevalidated"
    assert not any(name.startswith("ACME_RA_UPSTREAM_DNS_") for name in env)


@pytest.mark.parametrize("kid, hmac_key, note", [
    ("", "", None),
    ("kid-only", "", "eab_kid without eab_hmac_key"),
    ("", EAB_HMAC_KEY, "eab_hmac_key without eab_kid"),
])
def test_missing_eab(kid: str, hmac_key: str, note: str | None) -> None:
    document = filled()
    document["authority"]["config"].update(eab_kid=kid, eab_hmac_key=hmac_key)
    migration = migrate(document)
    assert not any("EAB" in name for name, _ in migration.environment()) and not migration.secret_files
    assert [n for n in migration.notes if "eab" in n] == ([] if note is None else [
        (f"authority.config.{note}: no EAB configured; set ACME_RA_UPSTREAM_EAB_KID and "
         "ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE")])
    assert EAB_HMAC_KEY not in "".join(migration.notes)


@pytest.mark.parametrize("content, message", [
    ('{"authority": {', "is not JSON: Expecting property name enclosed in double quotes at line 1"),
    ("[1, 2]", "is not a step-ca ca.json: expected a JSON object"),
    ('{"authority": {"type": "jwk"}}', "authority.type is 'jwk', not 'externalcas'"),
    (b"\xff\xfe".decode("latin-1"), "is not JSON"),
])
def test_a_malformed_ca_json_is_one_line_and_exit_2(tmp_path: Path, content: str, message: str) -> None:
    code, _, notes, stdout = run(write(tmp_path, content))
    assert code == 2 and stdout == "" and len(notes) == 1 and message in notes[0], notes


def test_a_missing_ca_json_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, _, notes, _ = run(tmp_path / "nope.json")
    assert code == 2 and notes == [f"acme-ra: cannot read {tmp_path / 'nope.json'}: No such file or directory"]


def test_unknown_members_are_one_line_each() -> None:
    document = filled()
    document["frobnicate"] = 1
    document["authority"]["claims"] = {}
    document["authority"]["config"]["insecure_skip_verify"] = True
    document["authority"]["config"]["metrics"]["colour"] = "blue"
    document["authority"]["config"]["dns01_txt"] = "rfc2136"
    notes = migrate(document).notes
    assert "frobnicate: unknown ca.json member, ignored" in notes
    assert "authority.claims: unknown or unsupported member, ignored" in notes
    assert "authority.config.insecure_skip_verify: unknown acme-proxy setting, ignored" in notes
    assert "authority.config.metrics.colour: unknown member, ignored" in notes
    assert "authority.config.dns01_txt: expected an object, ignored" in notes


def test_provisioners_policy_address_and_metrics() -> None:
    document = filled()
    document.update(address="127.0.0.1:8443", dnsNames=["acme.example.edu", "acme-proxy.example.edu"])
    authority = document["authority"]
    authority["config"]["metrics"] = {"enabled": False, "port": 9123}
    authority["config"]["certlifetime"] = "2160h"
    authority["provisioners"] = [
        {"type": "ACME", "name": "acme", "challenges": ["http-01", "dns-01"], "requireEAB": True},
        {"type": "ACME", "name": "ecc", "challenges": ["tls-alpn-01", "device-attest-01"],
         "claims": {"defaultTLSCertDuration": "24h"}},
        {"type": "JWK", "name": "admin@example.edu"},
    ]
    authority["policy"] = {"x509": {"allow": {"dns": ["*.example.edu", "example.edu"], "ip": ["10.0.0.0/8"]},
                                    "deny": {"dns": ["bad.example.edu"]}}}
    migration = migrate(document)
    env = dict(migration.environment())
    assert env["ACME_RA_LISTEN"] == "127.0.0.1:8443"
    assert env["ACME_RA_EXTERNAL_URL"] == "https://acme.example.edu:8443"
    assert env["ACME_RA_METRICS_LISTEN"] == ""
    assert env["ACME_RA_UPSTREAM_CERT_LIFETIME_DAYS"] == "90"
    assert env["ACME_RA_PROVISIONERS"] == "acme,ecc"
    assert env["ACME_RA_CHALLENGE_TYPES"] == "http-01,dns-01,tls-alpn-01"
    assert env["ACME_RA_EAB_REQUIRED"] == "true"
    assert env["ACME_RA_POLICY_ALLOW"] == "*.example.edu,example.edu,10.0.0.0/8"
    assert env["ACME_RA_POLICY_DENY"] == "bad.example.edu"
    joined = "\n".join(migration.notes)
    for expected in ("acme-proxy.example.edu need a certificate", "provisioner admin@example.edu (type JWK)",
                     "challenge device-attest-01", "claims.defaultTLSCertDuration", "their challenges differ",
                     "EAB is now required on every provisioner"):
        assert expected in joined


def test_the_printed_environment_is_readable_by_a_shell(tmp_path: Path) -> None:
    document = filled()
    document["authority"]["config"]["account_email"] = "pki team <pki@example.edu>"
    _, env, _, stdout = run(write(tmp_path, document))
    assert env["ACME_RA_UPSTREAM_EMAIL"] == "pki team <pki@example.edu>"
    assert "ACME_RA_UPSTREAM_EMAIL='pki team <pki@example.edu>'" in stdout


def test_the_migration_page_shows_what_the_command_prints(tmp_path: Path) -> None:
    """docs/migrating-from-acme-proxy.md: its first sh block, run in /root, prints its two text
    blocks (stdout, then stderr)."""
    page = (ROOT / "docs" / "migrating-from-acme-proxy.md").read_text()
    sh = re.search(r"^```sh\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
    shown = re.findall(r"^```text\n(.*?)^```", page, re.DOTALL | re.MULTILINE)[:2]
    assert sh is not None and len(shown) == 2
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + sh.group(1)], cwd=tmp_path, capture_output=True,
                          text=True, env=base_environment() | {"PATH": f"{Path(sys.executable).parent}:{os.defpath}"},
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert [done.stdout.replace(str(tmp_path), "/root"), done.stderr.replace(str(tmp_path), "/root")] == shown


def test_several_ca_json_become_upstreams_of_a_config_file(tmp_path: Path) -> None:
    import yaml

    rsa = write(tmp_path, filled(**RFC2136), "incommon-rsa.json")
    other = filled(provider="cloudflare", env_vars={"CF_DNS_API_TOKEN": "cf-secret-token"})
    other["authority"]["config"].update(ca_url="https://acme.sectigo.com/v2/InCommonECCOV", eab_kid="kid-ecc")
    other["authority"]["provisioners"].append({"type": "ACME", "name": "ecc"})
    other["address"] = ":8443"
    ecc = write(tmp_path, other, "incommon-ecc.json")
    config_file = tmp_path / "acme-ra.yaml"
    done = acme_ra(["config", "from-acme-proxy", str(rsa), str(ecc), "--config-file", str(config_file),
                    "--secrets-dir", str(tmp_path / "secrets")], base_environment())
    assert done.returncode == 0, done.stderr
    env = env_lines(done.stdout)
    assert env["ACME_RA_CONFIG_FILE"] == str(config_file.resolve()) and env["ACME_RA_LISTEN"] == "0.0.0.0:443"
    assert env["ACME_RA_PROVISIONERS"] == "acme,incommon-ecc,ecc"
    assert not any(name.startswith("ACME_RA_UPSTREAM_") for name in env)
    config = yaml.safe_load(config_file.read_text())
    assert list(config["upstreams"]) == ["incommon-rsa", "incommon-ecc"]
    assert config["default_upstream"] == "incommon-rsa"
    assert config["provisioners"] == {"acme": {"upstream": "incommon-rsa"},
                                      "incommon-ecc": {"upstream": "incommon-ecc"}, "ecc": {"upstream": "incommon-ecc"}}
    assert config["upstreams"]["incommon-rsa"]["dns_update"]["rfc2136"]["server"] == "ns1.example.edu:53"
    assert config["upstreams"]["incommon-ecc"]["dns_update"] == {"hook": "/etc/acme-ra/dns-hook"}
    written = config_file.read_text() + done.stdout + done.stderr
    assert EAB_HMAC_KEY not in written and TSIG_SECRET not in written and "cf-secret-token" not in written
    notes = done.stderr
    assert f"{ecc}: provisioner acme: the name is taken (upstream incommon-rsa), renamed incommon-ecc" in notes
    assert f"{ecc}: ACME_RA_LISTEN=0.0.0.0:8443: differs from the first ca.json's" in notes
    assert f"{ecc}: dns01_txt provider cloudflare: acme-ra has no cloudflare publisher" in notes

    # The hook named for the provider acme-ra has no publisher of is the operator's to write.
    hook = tmp_path / "dns-hook"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    config_file.write_text(config_file.read_text().replace("/etc/acme-ra/dns-hook", str(hook)))
    check = acme_ra(["config", "check"], base_environment() | env | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path / "var")})
    assert check.returncode == 0, check.stderr


def test_several_ca_json_need_a_config_file(tmp_path: Path) -> None:
    one = write(tmp_path, filled(), "a.json")
    done = acme_ra(["config", "from-acme-proxy", str(one), str(one)], base_environment())
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "acme-ra: several ca.json files become several upstreams: give --config-file PATH\n"


def test_the_migration_page_shows_what_the_seeds_own_example_gives() -> None:
    """docs/migrating-from-acme-proxy.md's recipes seed-command, seed-env and seed-notes: the
    command run from the checkout prints exactly what the page shows."""
    command = recipe("migrating-from-acme-proxy.md", "seed-command").strip()
    assert command.endswith(" > seed.env")
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + command.removesuffix(" > seed.env")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          env=base_environment() | {"PATH": f"{Path(sys.executable).parent}:{os.defpath}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == recipe("migrating-from-acme-proxy.md", "seed-env")
    assert done.stderr == recipe("migrating-from-acme-proxy.md", "seed-notes")
    assert "ACME_RA_UPSTREAM_AUTHZ_STRATEGY=prevalidated" in done.stdout
