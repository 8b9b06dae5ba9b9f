"""http-01 (RFC 8555 §8.3, RFC 8738 §4 for IP identifiers): fetch the key authorization over HTTP.

The validator resolves the name itself, keeps the addresses the network policy permits, and
connects to each in turn (IPv4 first) with the identifier in the Host header; an IP identifier is
connected to directly (Host = the IP, IPv6 in brackets). Redirects are followed like Boulder does:
at most ``MAX_REDIRECTS``, ``http`` on the validation HTTP port or ``https`` on the validation TLS
port (certificate not verified: the challenge proves control, not the certificate), every target
resolved and checked again.

The fetch goes over ``LeanTransport`` (asyncio protocols + httptools) rather than httpx's default
transport: under load, httpcore and anyio took most of the validator's http-01 CPU. The transport
opens a fresh connection per request (``keepalive=False``) and itself stops reading a body at
``MAX_BODY_BYTES`` and headers at ``MAX_HEAD_BYTES`` or ``MAX_HEADER_COUNT`` fields, so a huge or
endless answer costs neither memory nor time beyond those bounds.

Decoded bytes are bounded too: the validator asks for ``identity``; a body the server compressed
anyway is read raw (httpx's own decoders would inflate it whole: a 2 KiB ``gzip, gzip`` answer is
1 GiB) and at most one ``gzip``/``deflate`` layer is inflated, into at most ``MAX_BODY_BYTES``
(``decoded_body``); any other or a second coding is refused. How long all of it may take is the
validation's own deadline (``ACME_RA_VALIDATION_TIMEOUT_SECONDS``, worker.py): a server that
dribbles a byte at a time beats the read timeout but not that.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import zlib
from dataclasses import dataclass

import httpx

from acme_ra import telemetry
from acme_ra.http_transport import LeanTransport, ResponseLimitExceeded
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.network import NetworkPolicy, addresses_to_dial
from acme_ra_validator.resolver import NameResolver

HTTP01_PATH = "/.well-known/acme-challenge/"
# Seconds to open a TCP connection (and TLS, for https redirects) to one address.
CONNECT_TIMEOUT_SECONDS = 5.0
# Seconds between two reads of the response.
READ_TIMEOUT_SECONDS = 10.0
# The most of a response body that is read; anything longer cannot be a key authorization.
MAX_BODY_BYTES = 64 * 1024
# The longest status line and headers accepted (httpcore's bound, which the validator used before).
MAX_HEAD_BYTES = 100 * 1024
# The most header fields accepted in one response (1xx interim answers included).
MAX_HEADER_COUNT = 100
# Content codings inflated (one layer at most, into at most MAX_BODY_BYTES); "identity" is none.
DECODED_CONTENT_CODINGS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
MAX_CONTENT_CODINGS = 1
# Fetches under way at once to one address (httpx's default bound for the whole client, before).
MAX_CONNECTIONS_PER_ADDRESS = 100
MAX_REDIRECTS = 10
# Longest redirect target followed (Boulder: 2000 characters of path).
MAX_REDIRECT_URL_CHARS = 2000
# How much of a wrong response a problem detail quotes.
QUOTED_BODY_CHARS = 128
USER_AGENT = "acme-ra-validator"
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class ValidationPorts:
    """Where the validator connects: ACME_RA_VALIDATION_HTTP_PORT / ACME_RA_VALIDATION_TLS_PORT."""

    http: int = 80
    tls: int = 443

    def for_scheme(self, scheme: str) -> int:
        return self.tls if scheme == "https" else self.http


def new_http_client() -> httpx.AsyncClient:
    """The process's one client: no proxies from the environment, no redirects of its own, no
    keep-alive (each validation opens fresh connections to the addresses it resolved), no
    certificate verification for https redirects (as Boulder), bodies and headers bounded."""
    transport = LeanTransport(
        _unverified_tls(),
        max_connections_per_origin=MAX_CONNECTIONS_PER_ADDRESS,
        keepalive=False,
        max_body_bytes=MAX_BODY_BYTES,
        max_head_bytes=MAX_HEAD_BYTES,
        max_header_count=MAX_HEADER_COUNT,
    )
    return httpx.AsyncClient(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
        # identity: no compressed answers (a key authorization is ~90 bytes); one that comes
        # anyway is decoded within bounds (decoded_body), never by httpx.
        headers={"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"},
    )


def _unverified_tls() -> ssl.SSLContext:
    """TLS for https redirects: any certificate, HTTP/1.1 offered by ALPN (as httpx's verify=False)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def challenge_url(host: str, port: int, token: str) -> httpx.URL:
    return httpx.URL(scheme="http", host=host, port=port, path=HTTP01_PATH + token)


async def check_http01(
    client: httpx.AsyncClient,
    resolver: NameResolver,
    policy: NetworkPolicy,
    ports: ValidationPorts,
    host: str,
    token: str,
    key_authorization: str,
) -> None:
    """Return when ``host`` (a DNS name or an IP address) serves ``key_authorization``; raise
    ValidationFailure otherwise."""
    url = challenge_url(host, ports.http, token)
    for _ in range(MAX_REDIRECTS + 1):
        status, location, encoding, raw = await _fetch(client, resolver, policy, url)
        if status in _REDIRECT_STATUSES and location:
            url = _redirect_target(url, location, ports)
            continue
        break
    else:
        raise ValidationFailure("connection", f"Fetching {url}: too many redirects (more than {MAX_REDIRECTS})")
    if status != 200:
        raise ValidationFailure("unauthorized", f"Invalid response from {url}: HTTP {status}")
    body = decoded_body(raw, encoding, url)
    got = body.decode("utf-8", "replace").rstrip()
    if got != key_authorization:
        raise ValidationFailure(
            "unauthorized",
            "The key authorization file from the server did not match this challenge: "
            f"expected {json.dumps(key_authorization)} got {json.dumps(got[:QUOTED_BODY_CHARS])}",
        )


async def _fetch(
    client: httpx.AsyncClient, resolver: NameResolver, policy: NetworkPolicy, url: httpx.URL
) -> tuple[int, str | None, str | None, bytes]:
    """GET ``url`` from the first of its permitted addresses that accepts a connection: status,
    Location, Content-Encoding, and the body as it came (at most ``MAX_BODY_BYTES``, not decoded)."""
    host = url.raw_host.decode("ascii")  # IDNs in A-labels, IPv6 without brackets
    addresses = await addresses_to_dial(resolver, policy, host)
    host_header = url.netloc.decode("ascii")
    # TLS: SNI is the name (never an IP address), as a browser would send it.
    extensions = {"sni_hostname": host} if url.scheme == "https" and not _is_ip(host) else {}
    failure: ValidationFailure | None = None
    for address in addresses:
        with telemetry.span(
            "validator.http_fetch", **{"url.full": str(url), "network.peer.address": address}
        ) as span:
            try:
                async with client.stream(
                    "GET", url.copy_with(host=address), headers={"Host": host_header}, extensions=extensions
                ) as response:
                    body = await _read_raw_body(response)
                    span.set_attribute("http.response.status_code", response.status_code)
                    headers = response.headers
                    return response.status_code, headers.get("location"), headers.get("content-encoding"), body
            except httpx.ConnectTimeout:
                failure = ValidationFailure("connection", f"{address}: Fetching {url}: Timeout during connect")
            except httpx.ConnectError:
                failure = ValidationFailure(
                    "connection", f"{address}: Fetching {url}: Connection refused or unreachable"
                )
            except httpx.TimeoutException:
                raise ValidationFailure("connection", f"{address}: Fetching {url}: Timeout during read") from None
            except ResponseLimitExceeded as error:
                raise ValidationFailure(
                    "connection", f"{address}: Fetching {url}: Error reading the response ({error.reason})"
                ) from None
            except httpx.TransportError:
                raise ValidationFailure(
                    "connection", f"{address}: Fetching {url}: Error reading the response"
                ) from None
    raise failure or ValidationFailure("dns", f"No valid IP addresses found for {host}")


async def _read_raw_body(response: httpx.Response) -> bytes:
    """The body as the server sent it: ``aiter_raw``, never httpx's decoders (``aiter_bytes``
    would inflate a compressed body whole, whatever it grows to)."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) >= MAX_BODY_BYTES:
            break
    return bytes(body[:MAX_BODY_BYTES])


def decoded_body(raw: bytes, content_encoding: str | None, url: httpx.URL) -> bytes:
    """``raw`` with its content coding undone, at most ``MAX_BODY_BYTES`` of it whatever the
    compression ratio: one ``gzip``/``deflate`` layer is inflated by a bounded ``decompress``;
    any other coding, or more than ``MAX_CONTENT_CODINGS`` of them, is refused (``unauthorized``)."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return raw
    if len(codings) > MAX_CONTENT_CODINGS or codings[0] not in DECODED_CONTENT_CODINGS:
        raise ValidationFailure(
            "unauthorized",
            f"Invalid response from {url}: Content-Encoding {json.dumps(content_encoding)[:QUOTED_BODY_CHARS]} "
            "is not accepted (the validator asks for identity and decodes at most one gzip or deflate layer)",
        )
    try:
        inflater = zlib.decompressobj(DECODED_CONTENT_CODINGS[codings[0]])
        return inflater.decompress(raw, MAX_BODY_BYTES)
    except zlib.error:
        if codings[0] == "deflate":  # a raw deflate stream without its zlib header, as some servers send
            try:
                return zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, MAX_BODY_BYTES)
            except zlib.error:
                pass
        raise ValidationFailure(
            "unauthorized", f"Invalid response from {url}: the {codings[0]} body could not be decoded"
        ) from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _redirect_target(current: httpx.URL, location: str, ports: ValidationPorts) -> httpx.URL:
    if len(location) > MAX_REDIRECT_URL_CHARS:
        raise ValidationFailure(
            "connection", f"Fetching {current}: redirect target longer than {MAX_REDIRECT_URL_CHARS} characters"
        )
    try:
        target = current.join(location)
    except httpx.InvalidURL:
        raise ValidationFailure("connection", f"Fetching {current}: invalid redirect target") from None
    if target.scheme not in ("http", "https"):
        raise ValidationFailure(
            "connection", f"Fetching {current}: redirect to {target.scheme or 'a relative'} URL is not followed"
        )
    if not target.raw_host:
        raise ValidationFailure("connection", f"Fetching {current}: redirect target has no host")
    default_port = 443 if target.scheme == "https" else 80
    if (target.port or default_port) != ports.for_scheme(target.scheme):
        raise ValidationFailure(
            "connection",
            f"Fetching {current}: redirect to {target.scheme} port {target.port or default_port} is not followed "
            f"(only {ports.http} for http, {ports.tls} for https)",
        )
    return target.copy_with(fragment=None, userinfo=b"")  # no credentials sent on (httpx would)
