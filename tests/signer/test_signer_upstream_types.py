"""``upstreams.<name>.type`` in ACME_RA_CONFIG_FILE: acme (when absent), vault, command, lab; each
type's keys, and bad configuration as one line naming the file and the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from acme_ra_signer.upstream.catalog import UpstreamConfigError, load_catalog
from acme_ra_signer.upstream.command import CommandConfig
from acme_ra_signer.upstream.lab import LabConfig
from acme_ra_signer.upstream.vault import VaultConfig

from .test_signer_upstream_catalog import settings


def write(tmp_path: Path, upstreams: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "acme-ra.yaml"
    path.write_text(yaml.safe_dump({"upstreams": upstreams, **top}))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    token = tmp_path / "token"
    token.write_text("s.token\n")
    (tmp_path / "role-id").write_text("role")
    (tmp_path / "secret-id").write_text("secret")
    script = tmp_path / "issue"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    plain = tmp_path / "not-executable"
    plain.write_text("")
    return {"token": str(token), "role_id": str(tmp_path / "role-id"), "secret_id": str(tmp_path / "secret-id"),
            "script": str(script), "plain": str(plain)}


def test_each_type_is_read_by_its_module_and_routed_by_profile(tmp_path: Path, files: dict[str, str]) -> None:
    path = write(
        tmp_path,
        {
            "sectigo": {"directory_url": "https://acme.example.org/dir"},
            "bao": {"type": "vault", "url": "https://bao.example.org:8200/", "mount": "/pki_int/", "role": "acme-ra",
                    "token_file": files["token"]},
            "bao-approle": {"type": "vault", "url": "http://127.0.0.1:8200", "mount": "pki", "role": "r",
                            "approle_role_id_file": files["role_id"], "approle_secret_id_file": files["secret_id"]},
            "adcs": {"type": "command", "issue": files["script"], "timeout_seconds": 5},
            "lab": {"type": "lab"},
        },
        default_upstream="sectigo",
        profiles={"internal": {"upstream": "bao"}, "windows": {"upstream": "adcs"}},
    )
    catalog = load_catalog(settings(tmp_path, config_file=path))
    assert catalog.select(None, None).name == "sectigo"
    bao = catalog.select(None, "internal")
    assert isinstance(bao, VaultConfig)
    assert (bao.url, bao.mount, bao.role, bao.token_file) == ("https://bao.example.org:8200", "pki_int", "acme-ra",
                                                               Path(files["token"]))
    assert "s.token" not in repr(bao) and "s.token" not in str(bao.describe())
    adcs = catalog.select(None, "windows")
    assert isinstance(adcs, CommandConfig) and adcs.timeout_seconds == 5 and adcs.revoke is None
    assert isinstance(catalog.upstreams["lab"], LabConfig)
    assert isinstance(catalog.upstreams["bao-approle"], VaultConfig)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "ca"}, "upstreams.x.type='ca': expected one of acme, vault, command, lab"),
        ({"type": "vault", "mount": "pki", "role": "r", "token_file": "{token}"}, "upstreams.x.url: Field required"),
        ({"type": "vault", "url": "https://b", "mount": "pki", "role": "r", "token_file": "{token}", "tokenfile": "t"},
         "upstreams.x.tokenfile: Extra inputs are not permitted"),
        ({"type": "vault", "url": "bao:8200", "mount": "pki", "role": "r", "token_file": "{token}"},
         "upstreams.x.url='bao:8200': expected Vault's address"),
        ({"type": "vault", "url": "https://b", "mount": "pki", "role": "a/b", "token_file": "{token}"},
         "upstreams.x.role='a/b': expected a PKI role name"),
        ({"type": "vault", "url": "https://b", "mount": "pki", "role": "r"},
         "upstreams.x.token_file: required (Vault auth: token_file, or approle_role_id_file + approle_secret_id_file)"),
        ({"type": "vault", "url": "https://b", "mount": "pki", "role": "r", "approle_role_id_file": "{role_id}"},
         "upstreams.x.approle_secret_id_file: required"),
        ({"type": "vault", "url": "https://b", "mount": "pki", "role": "r", "token_file": "{token}",
          "approle_role_id_file": "{role_id}", "approle_secret_id_file": "{secret_id}"},
         "upstreams.x.token_file: either token_file or approle_role_id_file + approle_secret_id_file, not both"),
        ({"type": "vault", "url": "https://b", "mount": "pki", "role": "r", "token_file": "/nonexistent/token"},
         "upstreams.x.token_file: cannot read /nonexistent/token"),
        ({"type": "vault", "url": "https://b", "mount": "pki", "role": "r", "token_file": "{token}",
          "ca_bundle": "/nonexistent.pem"}, "upstreams.x.ca_bundle: /nonexistent.pem does not exist"),
        ({"type": "command"}, "upstreams.x.issue: Field required"),
        ({"type": "command", "issue": "{plain}"}, "upstreams.x.issue='{plain}': not an executable file"),
        ({"type": "command", "issue": "{script}", "revoke": "relative/revoke"},
         "upstreams.x.revoke='relative/revoke': not an executable file"),
        ({"type": "command", "issue": "{script}", "timeout_seconds": 0},
         "upstreams.x.timeout_seconds: Input should be greater than 0"),
        ({"type": "lab", "url": "https://x"}, "upstreams.x.url: Extra inputs are not permitted"),
        ({"type": "acme", "directory_url": "https://a/dir", "role": "r"}, "upstreams.x.role: Extra inputs are not permitted"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_bad_configuration_is_one_line_naming_the_file_and_key(
    tmp_path: Path, files: dict[str, str], entry: dict[str, Any], message: str
) -> None:
    entry = {key: value.format(**files) if isinstance(value, str) else value for key, value in entry.items()}
    path = write(tmp_path, {"x": entry})
    with pytest.raises(UpstreamConfigError) as raised:
        load_catalog(settings(tmp_path, config_file=path))
    text = str(raised.value)
    assert "\n" not in text
    assert text.startswith(f"acme-ra: invalid configuration: ACME_RA_CONFIG_FILE ({path}): "), text
    assert message.format(**files) in text, text


def test_the_signer_refuses_to_start_with_a_bad_vault_entry(tmp_path: Path) -> None:
    path = write(tmp_path, {"bao": {"type": "vault", "url": "https://bao.example.org", "mount": "pki", "role": "r"}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACME_RA_")}
    env.update({"ACME_RA_UPSTREAM": "acme", "ACME_RA_CONFIG_FILE": str(path), "ACME_RA_NATS_URL": "nats://127.0.0.1:1",
                "ACME_RA_SECRET_KEY": "0123456789abcdef0123", "ACME_RA_STATE_DIR": str(tmp_path / "var")})
    run = subprocess.run([sys.executable, "-m", "acme_ra_signer"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"acme-ra: invalid configuration: ACME_RA_CONFIG_FILE ({path}): upstreams.bao.token_file: required "
        "(Vault auth: token_file, or approle_role_id_file + approle_secret_id_file)"
    )
