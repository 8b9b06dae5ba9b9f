from __future__ import annotations

import time

import pytest

from acme_ra_validator.resolver import LookupFailed, NameNotFound, NameResolver

from .conftest import DnsLab


async def test_localhost_names_resolve_without_a_query() -> None:
    # Port 9 on 127.0.0.1 answers nothing: any query would time out after the lifetime.
    resolver = NameResolver([("127.0.0.1", 9)], lifetime=3.0)
    started = time.monotonic()
    assert await resolver.addresses("myhost.localhost") == ["127.0.0.1", "::1"]
    assert await resolver.addresses("LOCALHOST.") == ["127.0.0.1", "::1"]
    with pytest.raises(NameNotFound):
        await resolver.txt("_acme-challenge.myhost.localhost")
    assert time.monotonic() - started < 0.5


async def test_ip_literals_are_not_resolved() -> None:
    resolver = NameResolver([("127.0.0.1", 9)], lifetime=3.0)
    assert await resolver.addresses("192.0.2.7") == ["192.0.2.7"]
    assert await resolver.addresses("2001:db8::1") == ["2001:db8::1"]


async def test_configured_resolver_returns_ipv4_first(dns_lab: DnsLab) -> None:
    dns_lab.zone.add("www.example.test. 60 IN AAAA 2001:db8::5")
    dns_lab.zone.add("www.example.test. 60 IN A 192.0.2.5")
    assert await dns_lab.resolver().addresses("www.example.test") == ["192.0.2.5", "2001:db8::5"]


async def test_configured_resolver_follows_cname(dns_lab: DnsLab) -> None:
    dns_lab.zone.add("alias.example.test. 60 IN CNAME www.example.test.")
    dns_lab.zone.add("www.example.test. 60 IN A 192.0.2.5")
    assert await dns_lab.resolver().addresses("alias.example.test") == ["192.0.2.5"]


async def test_nxdomain_and_servfail(dns_lab: DnsLab) -> None:
    with pytest.raises(NameNotFound):
        await dns_lab.resolver().addresses("nothing.example.test")
    dns_lab.zone.servfail.add("broken.example.test.")
    with pytest.raises(LookupFailed):
        await dns_lab.resolver().addresses("broken.example.test")


async def test_system_resolver_uses_getaddrinfo() -> None:
    resolver = NameResolver([])
    # Resolved through getaddrinfo (/etc/hosts), not through a DNS query.
    assert "127.0.0.1" in await resolver.addresses("127.0.0.1")
