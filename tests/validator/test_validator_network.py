"""The network policy (SSRF guard): default deny list, allow and deny lists."""

from __future__ import annotations

import pytest

from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.network import NetworkPolicy, addresses_to_dial, parse_networks

from .conftest import DnsLab


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "::1",  # loopback
        "169.254.169.254", "fe80::1",  # link-local, cloud metadata
        "10.0.0.1", "172.16.5.4", "192.168.1.1", "fd12:3456::1",  # private, ULA
        "100.64.0.1",  # CGNAT
        "0.0.0.0", "::",  # unspecified
        "224.0.0.1", "ff02::1",  # multicast
        "240.0.0.1", "255.255.255.255",  # reserved, broadcast
        "192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1",  # documentation
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",  # IPv4 inside IPv6
        "2002:7f00:1::1",  # 6to4
    ],
)
def test_default_policy_refuses_special_purpose_addresses(address: str) -> None:
    assert not NetworkPolicy().permits(address)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "64:ff9b::808:808"])
def test_default_policy_permits_public_addresses(address: str) -> None:
    assert NetworkPolicy().permits(address)


def test_allow_overrides_the_default_deny_list() -> None:
    lab = NetworkPolicy.from_lists(allow="127.0.0.0/8,::1/128")
    assert lab.permits("127.0.0.1") and lab.permits("::1") and lab.permits("::ffff:127.0.0.1")
    assert not lab.permits("10.0.0.1") and not lab.permits("169.254.169.254")


def test_explicit_deny_wins_over_allow() -> None:
    policy = NetworkPolicy.from_lists(allow="127.0.0.0/8, 10.0.0.0/8", deny="127.0.0.2, 10.9.0.0/16, 93.184.0.0/16")
    assert policy.permits("127.0.0.1") and policy.permits("10.1.0.1")
    assert not policy.permits("127.0.0.2") and not policy.permits("10.9.1.1")
    assert not policy.permits("93.184.215.14")  # a public range denied on purpose


def test_parse_networks() -> None:
    assert [str(n) for n in parse_networks(" 127.0.0.1 , 10.1.2.3/8,,::1")] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError):
        parse_networks("not-a-network")


async def test_addresses_to_dial_keeps_permitted_ones(dns_lab: DnsLab) -> None:
    dns_lab.zone.add("mixed.example.test. 60 IN A 10.0.0.1")
    dns_lab.zone.add("mixed.example.test. 60 IN A 93.184.215.14")
    dns_lab.zone.add("mixed.example.test. 60 IN AAAA fd00::1")
    assert await addresses_to_dial(dns_lab.resolver(), NetworkPolicy(), "mixed.example.test") == ["93.184.215.14"]


async def test_addresses_to_dial_all_refused(dns_lab: DnsLab) -> None:
    dns_lab.zone.add("inside.example.test. 60 IN A 192.168.0.10")
    with pytest.raises(ValidationFailure) as failure:
        await addresses_to_dial(dns_lab.resolver(), NetworkPolicy(), "inside.example.test")
    assert failure.value.to_data() == {
        "type": "connection",
        "detail": "192.168.0.10 is in a network the validator may not reach (ACME_RA_VALIDATION_DENY_NETWORKS)",
    }


async def test_addresses_to_dial_nxdomain(dns_lab: DnsLab) -> None:
    with pytest.raises(ValidationFailure) as failure:
        await addresses_to_dial(dns_lab.resolver(), NetworkPolicy(), "nothing.example.test")
    assert failure.value.type == "dns"
