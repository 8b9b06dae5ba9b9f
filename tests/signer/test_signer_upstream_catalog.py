"""Named upstreams from the environment and ACME_RA_CONFIG_FILE, and which one an order gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from acme_ra.config import Settings
from acme_ra_signer.upstream.catalog import Upstream, UpstreamConfigError, load_catalog, sealing_secret

HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def acme(upstream: object) -> Upstream:
    """An ACME upstream of the catalog (the only type these tests configure)."""
    assert isinstance(upstream, Upstream), upstream
    return upstream


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
            upstream_authz_strategy="prevalidated",
        )
    )
    upstream = acme(catalog.select("acme", None))
    assert upstream.name == catalog.default == "default"
    assert upstream.has_eab and upstream.cert_lifetime_days == 365 and upstream.authz_strategy == "prevalidated"
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
    assert acme(catalog.select("acme", None)).name == "rsa"
    assert acme(catalog.select("ecc", None)).name == "ecc"
    assert catalog.select("acme", "tlsserver-ecc").name == "ecc"
    assert catalog.select("acme", "unknown-profile").name == "rsa"
    ecc = acme(catalog.upstreams["ecc"])
    assert ecc.eab_hmac_key is not None and ecc.eab_hmac_key.get_secret_value() == HMAC
    assert ecc.account_key_type == "ec256" and acme(catalog.upstreams["rsa"]).account_key_type == "rsa2048"
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
            ("upstreams:\n  a:\n    directory_url: https://a.test/dir\n"
            "    eab_kid: k\n    eab_hmac_key_file: /nonexistent\n"),
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


TSIG = "3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
DNS01 = {
    "upstream_directory_url": "https://ca.test/dir",
    "upstream_authz_strategy": "dns-01",
    "upstream_dns_rfc2136_server": "192.0.2.53:5353",
    "upstream_dns_tsig_key_name": "acme-ra",
    "upstream_dns_tsig_secret": SecretStr(TSIG),
}


def test_default_strategy_is_prevalidated_and_dns01_reads_the_rfc2136_settings(tmp_path: Path) -> None:
    plain = acme(load_catalog(settings(tmp_path, upstream_directory_url="https://ca.test/dir")).upstreams["default"])
    assert plain.authz_strategy == "prevalidated" and plain.rfc2136 is None
    secret_file = tmp_path / "tsig.secret"
    secret_file.write_text(TSIG + "\n")
    values = {**DNS01, "upstream_dns_tsig_secret": None, "upstream_dns_tsig_secret_file": secret_file}
    upstream = acme(load_catalog(
        settings(tmp_path, **values, upstream_dns_nameservers="192.0.2.1, [2001:db8::1]:5353")
    ).upstreams["default"])
    assert upstream.authz_strategy == "dns-01" and upstream.rfc2136 is not None
    assert (upstream.rfc2136.host, upstream.rfc2136.port, upstream.rfc2136.key_name) == ("192.0.2.53", 5353, "acme-ra.")
    assert upstream.rfc2136.algorithm == "hmac-sha256" and upstream.rfc2136.secret.get_secret_value() == TSIG
    assert upstream.dns_nameservers == (("192.0.2.1", 53), ("2001:db8::1", 5353))
    assert TSIG not in repr(upstream)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"upstream_authz_strategy": "answer"}, "AUTHZ_STRATEGY='answer': no longer a strategy; use prevalidated"),
        ({"upstream_authz_strategy": "fail"}, "AUTHZ_STRATEGY='fail': no longer a strategy; use prevalidated"),
        ({"upstream_authz_strategy": "http01"}, "ACME_RA_UPSTREAM_AUTHZ_STRATEGY='http01': expected one of"),
        ({"upstream_authz_strategy": "dns01"}, "ACME_RA_UPSTREAM_AUTHZ_STRATEGY='dns01': expected one of"),
        ({**DNS01, "upstream_dns_rfc2136_server": ""}, "ACME_RA_UPSTREAM_DNS_RFC2136_SERVER or _DNS_HOOK: required"),
        ({**DNS01, "upstream_dns_rfc2136_server": "ns:x"}, "ACME_RA_UPSTREAM_DNS_RFC2136_SERVER='ns:x': expected"),
        ({**DNS01, "upstream_dns_tsig_key_name": " "}, "ACME_RA_UPSTREAM_DNS_TSIG_KEY_NAME: required"),
        ({**DNS01, "upstream_dns_tsig_algorithm": "sha256"}, "ACME_RA_UPSTREAM_DNS_TSIG_ALGORITHM='sha256'"),
        ({**DNS01, "upstream_dns_tsig_secret": None}, "ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE: required"),
        ({**DNS01, "upstream_dns_tsig_secret": SecretStr("not base64!")}, "not a base64 TSIG secret"),
        (
            {**DNS01, "upstream_dns_tsig_secret_file": Path("/nonexistent"), "upstream_dns_tsig_secret": None},
            "ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE: cannot read /nonexistent",
        ),
        (
            {**DNS01, "upstream_dns_hook": Path("/nonexistent-hook")},
            "ACME_RA_UPSTREAM_DNS_HOOK='/nonexistent-hook': not an executable file",
        ),
        ({**DNS01, "upstream_dns_hook": Path("/bin/sh")}, "ACME_RA_UPSTREAM_DNS_HOOK: either RFC 2136 or a hook"),
        ({**DNS01, "upstream_dns_nameservers": "192.0.2.1:99999"}, "_NAMESERVERS='192.0.2.1:99999': expected"),
        ({**DNS01, "upstream_dns_nameservers": "ns1.example.org"}, "'ns1.example.org' is not an IP address"),
    ],
)
def test_strategy_and_dns_mistakes_are_one_line_naming_the_variable(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    values = {"upstream_directory_url": "https://ca.test/dir", **values}
    with pytest.raises(UpstreamConfigError) as error:
        load_catalog(settings(tmp_path, **values))
    text = str(error.value)
    assert message in text and "\n" not in text and "not base64!" not in text, text


def test_config_file_declares_dns01_per_upstream(tmp_path: Path) -> None:
    secret_file = tmp_path / "tsig.secret"
    secret_file.write_text(TSIG)
    config = tmp_path / "acme-ra.yaml"
    config.write_text(
        "upstreams:\n"
        "  certinext:\n"
        "    directory_url: https://ca.test/dir\n"
        "    authz_strategy: dns-01\n"
        "    dns_update:\n"
        "      rfc2136:\n"
        "        server: 192.0.2.53\n"
        "        tsig_key_name: acme-ra\n"
        "        tsig_algorithm: hmac-sha512\n"
        f"        tsig_secret_file: {secret_file}\n"
        "    dns_nameservers: [192.0.2.53:53]\n"
        "    dns_propagation_timeout_seconds: 300\n"
        "    validation_timeout_seconds: 1800\n"
        "  sectigo:\n"
        "    directory_url: https://ca.test/other\n"
        "    authz_strategy: fail\n"
        "default_upstream: certinext\n"
    )
    with pytest.raises(UpstreamConfigError) as error:
        load_catalog(settings(tmp_path, config_file=config))
    assert f"ACME_RA_CONFIG_FILE ({config}): upstreams.sectigo.authz_strategy='fail': no longer" in str(error.value)
    config.write_text(config.read_text().replace("authz_strategy: fail", "authz_strategy: prevalidated"))
    catalog = load_catalog(settings(tmp_path, config_file=config))
    upstream = acme(catalog.upstreams["certinext"])
    assert upstream.rfc2136 is not None and upstream.rfc2136.port == 53 and upstream.rfc2136.algorithm == "hmac-sha512"
    assert upstream.dns_propagation_timeout_seconds == 300 and upstream.validation_timeout_seconds == 1800
    assert acme(catalog.upstreams["sectigo"]).authz_strategy == "prevalidated"
    config.write_text(config.read_text().replace("server: 192.0.2.53", "server: ':53'"))
    with pytest.raises(UpstreamConfigError, match=r"upstreams\.certinext\.dns_update\.rfc2136\.server=':53'"):
        load_catalog(settings(tmp_path, config_file=config))


def test_describe_shows_strategy_and_where_records_go_never_the_secret(tmp_path: Path) -> None:
    """What the signer's /upstreams tells acme-ra upstream status about each upstream."""
    plain = acme(load_catalog(settings(tmp_path, upstream_directory_url="https://ca.test/dir")).upstreams["default"])
    assert plain.describe() == {"name": "default", "authz_strategy": "prevalidated", "dns_update": None}
    rfc2136 = load_catalog(settings(tmp_path, **DNS01)).upstreams["default"]
    assert rfc2136.describe() == {
        "name": "default", "authz_strategy": "dns-01",
        "dns_update": {"kind": "rfc2136", "server": "192.0.2.53:5353", "tsig_key_name": "acme-ra."},
    }
    assert TSIG not in repr(rfc2136.describe())
    hook = tmp_path / "txt-hook"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    hooked = load_catalog(settings(tmp_path, **{**DNS01, "upstream_dns_rfc2136_server": "",
                                                "upstream_dns_hook": hook})).upstreams["default"]
    assert hooked.describe()["dns_update"] == {"kind": "hook", "path": str(hook)}


def test_http01_loads_from_the_environment_and_per_upstream_from_the_file(tmp_path: Path) -> None:
    """http-01 needs nothing else of the signer: the frontends serve what it stores."""
    env = acme(load_catalog(
        settings(tmp_path, upstream_directory_url="https://ca.test/dir", upstream_authz_strategy="HTTP-01")
    ).upstreams["default"])
    assert env.authz_strategy == "http-01"
    assert env.describe() == {"name": "default", "authz_strategy": "http-01", "dns_update": None}
    config = tmp_path / "acme-ra.yaml"
    config.write_text(
        "upstreams:\n"
        "  certinext:\n"
        "    directory_url: https://ca.test/dir\n"
        "    authz_strategy: http-01\n"
        "    validation_timeout_seconds: 900\n"
        "  sectigo:\n"
        "    directory_url: https://ca.test/other\n"
        "default_upstream: sectigo\n"
    )
    catalog = load_catalog(settings(tmp_path, config_file=config))
    assert acme(catalog.upstreams["certinext"]).authz_strategy == "http-01"
    assert acme(catalog.upstreams["certinext"]).validation_timeout_seconds == 900
    assert acme(catalog.upstreams["sectigo"]).authz_strategy == "prevalidated"


def test_every_configurable_strategy_has_one_way_to_prove() -> None:
    """``authz_strategy`` is checked against ``AUTHZ_STRATEGIES``; the authorization step
    dispatches on ``STRATEGIES``: the two name the same strategies."""
    from acme_ra_signer.upstream.acme_config import AUTHZ_STRATEGIES
    from acme_ra_signer.upstream.authorizations import STRATEGIES

    assert set(AUTHZ_STRATEGIES) == set(STRATEGIES)
