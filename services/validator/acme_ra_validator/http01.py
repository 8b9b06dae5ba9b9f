"""http-01 (RFC 8555 §8.3): fetch the key authorization over plain HTTP.

The validator resolves the name itself and connects to each address in turn (IPv4 first) with
the identifier in the Host header. Redirects are followed (at most ``MAX_REDIRECTS``) only to
``http`` URLs on a DNS name and on the configured validation port; a redirect to https, to
another port or to an IP address fails the challenge.
"""

from __future__ import annotations

import ipaddress
import json

import httpx

from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.resolver import LookupFailed, NameNotFound, NameResolver

HTTP01_PATH = "/.well-known/acme-challenge/"
# Seconds to open a TCP connection to one address (before trying the next).
CONNECT_TIMEOUT_SECONDS = 5.0
# Seconds between two reads of the response.
READ_TIMEOUT_SECONDS = 10.0
# The most of a response body that is read; anything longer cannot be a key authorization.
MAX_BODY_BYTES = 64 * 1024
MAX_REDIRECTS = 10
# How much of a wrong response a problem detail quotes.
QUOTED_BODY_CHARS = 128
USER_AGENT = "acme-ra-validator"
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}


def new_http_client() -> httpx.AsyncClient:
    """The process's one client: no proxies from the environment, no redirects of its own,
    no keep-alive (each validation opens fresh connections to the addresses it resolved)."""
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"User-Agent": USER_AGENT, "Accept": "*/*"},
    )


def challenge_url(host: str, port: int, token: str) -> httpx.URL:
    return httpx.URL(scheme="http", host=host, port=port, path=HTTP01_PATH + token)


async def check_http01(
    client: httpx.AsyncClient,
    resolver: NameResolver,
    host: str,
    port: int,
    token: str,
    key_authorization: str,
) -> None:
    """Return when ``host`` serves ``key_authorization``; raise ValidationFailure otherwise."""
    url = challenge_url(host, port, token)
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = await _fetch(client, resolver, url)
        if status in _REDIRECT_STATUSES and location:
            url = _redirect_target(url, location, port)
            continue
        break
    else:
        raise ValidationFailure("connection", f"Fetching {url}: too many redirects (more than {MAX_REDIRECTS})")
    if status != 200:
        raise ValidationFailure("unauthorized", f"Invalid response from {url}: HTTP {status}")
    got = body.decode("utf-8", "replace").rstrip()
    if got != key_authorization:
        raise ValidationFailure(
            "unauthorized",
            "The key authorization file from the server did not match this challenge: "
            f"expected {json.dumps(key_authorization)} got {json.dumps(got[:QUOTED_BODY_CHARS])}",
        )


async def _fetch(client: httpx.AsyncClient, resolver: NameResolver, url: httpx.URL) -> tuple[int, str | None, bytes]:
    """GET ``url`` from the first of its addresses that accepts a connection."""
    host = url.raw_host.decode("ascii")
    try:
        addresses = await resolver.addresses(host)
    except NameNotFound as error:
        raise ValidationFailure("dns", f"No valid IP addresses found for {host} ({error.reason})") from None
    except LookupFailed as error:
        raise ValidationFailure("dns", f"DNS problem: {error.reason} looking up A/AAAA for {host}") from None
    host_header = url.netloc.decode("ascii")
    failure: ValidationFailure | None = None
    for address in addresses:
        try:
            async with client.stream("GET", url.copy_with(host=address), headers={"Host": host_header}) as response:
                body = await _read_body(response)
                return response.status_code, response.headers.get("location"), body
        except httpx.ConnectTimeout:
            failure = ValidationFailure("connection", f"{address}: Fetching {url}: Timeout during connect")
        except httpx.ConnectError:
            failure = ValidationFailure("connection", f"{address}: Fetching {url}: Connection refused or unreachable")
        except httpx.TimeoutException:
            raise ValidationFailure("connection", f"{address}: Fetching {url}: Timeout during read") from None
        except httpx.TransportError:
            raise ValidationFailure("connection", f"{address}: Fetching {url}: Error reading the response") from None
    raise failure or ValidationFailure("dns", f"No valid IP addresses found for {host}")


async def _read_body(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= MAX_BODY_BYTES:
            break
    return bytes(body[:MAX_BODY_BYTES])


def _redirect_target(current: httpx.URL, location: str, port: int) -> httpx.URL:
    try:
        target = current.join(location)
    except httpx.InvalidURL:
        raise ValidationFailure("connection", f"Fetching {current}: invalid redirect target") from None
    if target.scheme != "http":
        raise ValidationFailure(
            "connection", f"Fetching {current}: redirect to {target.scheme or 'a relative'} URL is not followed"
        )
    if (target.port or 80) != port:
        raise ValidationFailure("connection", f"Fetching {current}: redirect to port {target.port or 80} is not followed")
    try:
        ipaddress.ip_address(target.raw_host.decode("ascii").strip("[]"))
    except ValueError:
        return target.copy_with(fragment=None)
    raise ValidationFailure("connection", f"Fetching {current}: redirect to an IP address is not followed")
