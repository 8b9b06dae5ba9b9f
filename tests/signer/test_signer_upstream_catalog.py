"""Named upstreams from the environment and ACME_RA_CONFIG_FILE, and which one an order gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from acme_ra.config import Settings
from acme_ra_signer.upstream.catalog import UpstreamConfigError, load_catalog, sealing_secret

HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def settings(tmp_path: Path, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "state_dir": tmp_path,
        "upstream": "acme",
        "tls_cert_file": None,
        "tls_key_file": None,
        "config_file": None,
        "secret_key": None,
        "secret_key_file": None,
        "upstream_directory_url": "",
        "upstream_eab_kid": "",
        "upstream_eab_hmac_key": None,
        "upstream_eab_hmac_key_file": None,
        "upstream_ca_bundle": None,
        "upstream_email": "",
    }
    base.update(values)
    return Settings(**base)


def test_environment_alone_makes_the_default_upstream(tmp_path: Path) -> None:
    catalog = load_catalog(
        settings(
            tmp_path,
            upstream_directory_url="https://acme.sectigo.com/v2/InCommonRSAOV",
            upstream_eab_kid="kid-1",
            upstream_eab_hmac_key=SecretStr(HMAC),
            upstream_cert_lifetime_days=365,
            upstream_authz_strategy="fail",
        )
    )
    upstream = catalog.select("acme", None)
    assert upstream.name == catalog.default == "default"
    assert upstream.has_eab and upstream.cert_lifetime_days == 365 and upstream.authz_strategy == "fail"
    assert upstream.setting("eab_hmac_key") == "ACME_RA_UPSTREAM_EAB_HMAC_KEY"
    assert HMAC not in repr(upstream)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "ACME_RA_UPSTREAM_DIRECTORY_URL: required when ACME_RA_UPSTREAM=acme"),
        ({"upstream_directory_url": "acme.example.org/dir"}, "ACME_RA_UPSTREAM_DIRECTORY_URL='acme.example.org/dir'"),
        (
            {"upstream_directory_url": "https://ca.test/dir", "upstream_eab_kid": "k"},
            "ACME_RA_UPSTREAM_EAB_HMAC_KEY: the EAB key id and HMAC key go together",
        ),
        (
            {
                "upstream_directory_url": "https://ca.test/dir",
                "upstream_eab_kid": "k",
                "upstream_eab_hmac_key": SecretStr("!!!"),
            },
            "ACME_RA_UPSTREAM_EAB_HMAC_KEY: not a base64url HMAC key",
        ),
        (
            {"upstream_directory_url": "https://ca.test/dir", "upstream_ca_bundle": Path("/nonexistent.pem")},
            "ACME_RA_UPSTREAM_CA_BUNDLE: /nonexistent.pem does not exist",
        ),
        ({"upstream_directory_url": "https://ca.test/dir", "upstream_email": "mailto:x@y"}, "ACME_RA_UPSTREAM_EMAIL="),
    ],
)
def test_environment_mistakes_are_one_line_naming_the_variable(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(UpstreamConfigError) as error:
        load_catalog(settings(tmp_path, **values))
    text = str(error.value)
    assert text.startswith("acme-ra: invalid configuration: ") and message in text and "\n" not in text
    assert "!!!" not in text


def test_config_file_declares_several_upstreams_selected_by_profile_then_provisioner(tmp_path: Path) -> None:
    secret = tmp_path / "ecc.hmac"
    secret.write_text(HMAC + "\n")
    config = tmp_path / "acme-ra.toml"
    config.write_text(
        f"""
default_upstream = "rsa"

[upstreams.rsa]
directory_url = "https://acme.sectigo.com/v2/InCommonRSAOV"
eab_kid = "rsa-kid"
eab_hmac_key = "{HMAC}"
account_key_type = "rsa2048"
cert_lifetime_days = 365

[upstreams.ecc]
directory_url = "https://acme.sectigo.com/v2/InCommonECCOV"
eab_kid = "ecc-kid"
eab_hmac_key_file = "{secret}"
account_key_type = "ec256"

[profiles.tlsserver-ecc]
upstream = "ecc"
description = "ECDSA server certificates"

[provisioners]
ecc = "ecc"

[frontend_only_section]
anything = 1
"""
    )
    catalog = load_catalog(settings(tmp_path, config_file=config))
    assert set(catalog.upstreams) == {"rsa", "ecc"}
    assert catalog.select("acme", None).name == "rsa"
    assert catalog.select("ecc", None).name == "ecc"
    assert catalog.select("acme", "tlsserver-ecc").name == "ecc"
    assert catalog.select("acme", "unknown-profile").name == "rsa"
    ecc = catalog.upstreams["ecc"]
    assert ecc.eab_hmac_key is not None and ecc.eab_hmac_key.get_secret_value() == HMAC
    assert ecc.account_key_type == "ec256" and catalog.upstreams["rsa"].account_key_type == "rsa2048"
    assert ecc.setting("eab_hmac_key") == f"ACME_RA_CONFIG_FILE ({config}): upstreams.ecc.eab_hmac_key"


def test_env_upstream_and_file_upstreams_together(tmp_path: Path) -> None:
    config = tmp_path / "acme-ra.yaml"
    config.write_text("upstreams:\n  other:\n    directory_url: https://other.test/dir\n")
    catalog = load_catalog(settings(tmp_path, config_file=config, upstream_directory_url="https://ca.test/dir"))
    assert catalog.default == "default" and set(catalog.upstreams) == {"default", "other"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "upstreams:\n  a:\n    directory_url: https://a.test/dir\n  b:\n    directory_url: https://b.test/dir\n",
            "default_upstream: required with several upstreams (a, b)",
        ),
        (
            "upstreams:\n  a:\n    directory_url: https://a.test/dir\n    eab_kdi: typo\n",
            "upstreams.a.eab_kdi: Extra inputs are not permitted",
        ),
        (
            "upstreams:\n  a:\n    directory_url: https://a.test/dir\nprovisioners:\n  x: {upstream: b}\n",
            "provisioners.x.upstream: no upstream named 'b'",
        ),
        ("upstreams: [1, 2\n", "not valid YAML"),
        ("- just a list\n", "expected a mapping at the top level"),
        (
            "upstreams:\n  a:\n    directory_url: https://a.test/dir\n"
            "    eab_kid: k\n    eab_hmac_key_file: /nonexistent\n",
            "upstreams.a.eab_hmac_key_file: cannot read /nonexistent",
        ),
    ],
)
def test_config_file_mistakes_are_one_line_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "acme-ra.yaml"
    config.write_text(text)
    with pytest.raises(UpstreamConfigError) as error:
        load_catalog(settings(tmp_path, config_file=config))
    assert message in str(error.value) and f"ACME_RA_CONFIG_FILE ({config})" in str(error.value)
    assert "\n" not in str(error.value)


def test_sealing_secret_is_required_and_never_generated(tmp_path: Path) -> None:
    with pytest.raises(UpstreamConfigError, match="ACME_RA_SECRET_KEY: required when ACME_RA_UPSTREAM=acme"):
        sealing_secret(settings(tmp_path))
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(UpstreamConfigError, match="at least 16 characters"):
        sealing_secret(settings(tmp_path, secret_key=SecretStr("short")))
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-long-enough-secret-for-sealing\n")
    assert sealing_secret(settings(tmp_path, secret_key_file=secret_file)) == b"a-long-enough-secret-for-sealing"
