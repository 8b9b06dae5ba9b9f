from __future__ import annotations

import pytest

from acme_ra_validator.dns01 import check_dns01, txt_record_value
from acme_ra_validator.failure import ValidationFailure

from .conftest import DnsLab

KEY_AUTH = "tok-123.thumbprint-abc"


def test_txt_record_value() -> None:
    # base64url(SHA-256("tok-123.thumbprint-abc")), no padding: 43 characters.
    value = txt_record_value(KEY_AUTH)
    assert len(value) == 43 and "=" not in value
    assert txt_record_value("a") == "ypeBEsobvcr6wjGzmiPcTaeG7_gUfE5yuYB3ha_uSLs"


async def test_success(dns_lab: DnsLab) -> None:
    dns_lab.zone.add('_acme-challenge.example.test. 60 IN TXT "unrelated"')
    dns_lab.zone.add(f'_acme-challenge.example.test. 60 IN TXT "{txt_record_value(KEY_AUTH)}"')
    await check_dns01(dns_lab.resolver(), "example.test", KEY_AUTH)


async def test_cname_is_followed(dns_lab: DnsLab) -> None:
    dns_lab.zone.add("_acme-challenge.example.test. 60 IN CNAME example.test.acme-delegate.test.")
    dns_lab.zone.add(f'example.test.acme-delegate.test. 60 IN TXT "{txt_record_value(KEY_AUTH)}"')
    await check_dns01(dns_lab.resolver(), "example.test", KEY_AUTH)


async def test_wrong_value(dns_lab: DnsLab) -> None:
    dns_lab.zone.add('_acme-challenge.example.test. 60 IN TXT "wrong-value"')
    with pytest.raises(ValidationFailure) as failure:
        await check_dns01(dns_lab.resolver(), "example.test", KEY_AUTH)
    assert failure.value.type == "unauthorized"
    assert failure.value.detail == 'Incorrect TXT record "wrong-value" found at _acme-challenge.example.test'


async def test_nxdomain(dns_lab: DnsLab) -> None:
    with pytest.raises(ValidationFailure) as failure:
        await check_dns01(dns_lab.resolver(), "example.test", KEY_AUTH)
    assert failure.value.to_data() == {
        "type": "unauthorized",
        "detail": "No TXT record found at _acme-challenge.example.test",
    }


async def test_name_without_txt(dns_lab: DnsLab) -> None:
    dns_lab.zone.add("_acme-challenge.example.test. 60 IN A 192.0.2.1")
    with pytest.raises(ValidationFailure) as failure:
        await check_dns01(dns_lab.resolver(), "example.test", KEY_AUTH)
    assert failure.value.type == "unauthorized"


async def test_servfail(dns_lab: DnsLab) -> None:
    dns_lab.zone.servfail.add("_acme-challenge.example.test.")
    with pytest.raises(ValidationFailure) as failure:
        await check_dns01(dns_lab.resolver(), "example.test", KEY_AUTH)
    assert failure.value.type == "dns"
    assert "SERVFAIL" in failure.value.detail
