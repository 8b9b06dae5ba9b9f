"""An asynchronous ACME (RFC 8555) client over httpx, on the ``acme`` package's messages and JWS.

One ``AcmeClient`` per upstream directory: it fetches the directory, keeps a pool of nonces,
signs requests (``upstream/jws.py``), retries once on ``badNonce`` (RFC 8555 §6.5), and turns an
error response into ``AcmeProblem``. What the errors *mean* for an issuance is the driver's
business (``upstream/acme.py``); this module only speaks the protocol. Network failures and
5xx answers without a problem document become ``UpstreamUnavailable``.

Without a proxy the wire is ``acme_ra.http_transport.LeanTransport`` (HTTP/1.1 over asyncio
protocols and httptools), called straight (``LeanTransport.send``: no ``httpx.Request`` or
``httpx.Response`` per request); httpx's own transport cost more CPU per upstream request than
the rest of the signer's work on it. Through a proxy, httpx's transport does it all. Either way
the caller gets an ``UpstreamResponse``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import certifi
import httpx
from acme import messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.b64 import b64encode
from josepy.errors import DeserializationError
from josepy.interfaces import JSONDeSerializable
from josepy.json_util import decode_b64jose
from josepy.jwa import ES256, ES384, ES512, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA
from opentelemetry import trace

from acme_ra import telemetry
from acme_ra.http_transport import Answer, LeanTransport
from acme_ra_signer.upstream.base import RequestNotSent, UpstreamUnavailable
from acme_ra_signer.upstream.jws import JwsSigner

log = logging.getLogger("acme_ra_signer.upstream.acme_client")
# httpx logs every request at INFO; the signer logs one event per job instead.
logging.getLogger("httpx").setLevel(logging.WARNING)

USER_AGENT = "acme-ra-signer/0.1 (+https://github.com/acme-ra)"
_USER_AGENT = (b"User-Agent", USER_AGENT.encode())
JOSE_JSON = "application/jose+json"
PEM_CHAIN = "application/pem-certificate-chain"
PROBLEM_JSON = "application/problem+json"
# RSA size and EC curve of new upstream account keys (ACME_RA_UPSTREAM_ACCOUNT_KEY_TYPE).
ACCOUNT_KEY_TYPES = ("rsa2048", "ec256")


class OrderLost(Exception):
    """The upstream does not know the recorded order (or its authorization) any more."""


class AcmeProblem(Exception):
    """The upstream answered with an RFC 7807 problem document."""

    def __init__(self, error: messages.Error, status: int, url: str, retry_after: float | None) -> None:
        super().__init__(f"{url} -> {status} {error.typ}: {error.detail or ''}")
        self.error = error
        self.status = status
        self.url = url
        self.retry_after = retry_after

    @property
    def code(self) -> str:
        """The short ACME type (``badNonce``, ``unauthorized``, ...), or the full type if foreign."""
        return str(self.error.typ).removeprefix(messages.ERROR_PREFIX)

    @property
    def detail(self) -> str:
        return str(self.error.detail or self.error.title or self.error.typ)


class ResponseHeaders:
    """An upstream response's headers by lower-cased name: ``httpx.Headers``'s ``get``,
    ``get_list`` and ``[]``, as far as the signer reads them."""

    __slots__ = ("_values",)

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in raw:
            self._values.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))

    def get(self, name: str, default: Any = None) -> Any:
        """The value; several headers of that name joined with commas (as httpx does)."""
        values = self._values.get(name.lower())
        return ", ".join(values) if values else default

    def get_list(self, name: str) -> list[str]:
        return list(self._values.get(name.lower(), ()))

    def __getitem__(self, name: str) -> str:
        value: str | None = self.get(name)
        if value is None:
            raise KeyError(name)
        return value


class UpstreamResponse:
    """An upstream answer, read whole: the part of ``httpx.Response`` the signer uses."""

    __slots__ = ("content", "headers", "status_code", "url")

    def __init__(self, url: str, status_code: int, headers: Sequence[tuple[bytes, bytes]], content: bytes) -> None:
        self.url = url
        self.status_code = status_code
        self.headers = ResponseHeaders(headers)
        self.content = content

    @classmethod
    def of_answer(cls, url: str, answer: Answer) -> UpstreamResponse:
        return cls(url, answer.status, answer.headers, answer.body)

    @classmethod
    def of_httpx(cls, url: str, response: httpx.Response) -> UpstreamResponse:
        return cls(url, response.status_code, response.headers.raw, response.content)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass(frozen=True)
class AccountKey:
    """An upstream account's private key as a josepy JWK with its JWS algorithm, and the signer
    of its requests."""

    jwk: JWK
    alg: JWASignature
    signer: JwsSigner = field(repr=False, compare=False)

    @classmethod
    def generate(cls, kind: str) -> AccountKey:
        if kind == "ec256":
            return cls.from_private_key(ec.generate_private_key(ec.SECP256R1()))
        if kind == "rsa2048":
            return cls.from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        raise ValueError(f"unknown account key type {kind!r}; known: {', '.join(ACCOUNT_KEY_TYPES)}")

    @classmethod
    def from_private_key(cls, key: Any) -> AccountKey:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            alg = {256: ES256, 384: ES384, 521: ES512}[key.curve.key_size]
            jwk: JWK = JWKEC(key=key)
        elif isinstance(key, rsa.RSAPrivateKey):
            alg, jwk = RS256, JWKRSA(key=key)
        else:
            raise TypeError(f"unsupported account key type {type(key).__name__}")
        return cls(jwk, alg, JwsSigner(key, jwk.public_key().to_json()))

    @classmethod
    def from_pem(cls, pem: bytes) -> AccountKey:
        return cls.from_private_key(serialization.load_pem_private_key(pem, password=None))

    def to_pem(self) -> bytes:
        key: Any = self.jwk.key
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    @property
    def public_jwk(self) -> JWK:
        return self.jwk.public_key()

    @property
    def thumbprint(self) -> str:
        return b64encode(self.jwk.thumbprint()).decode()


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Trust for the upstream's TLS: the configured bundle, else certifi's roots — never the
    process environment (SSL_CERT_FILE and friends are ignored on purpose)."""
    return ssl.create_default_context(cafile=ca_bundle or certifi.where())


def retry_after_seconds(response: UpstreamResponse, now: dt.datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date); None if absent/bad."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


# Path segments that are resource ids, not names: replaced by ``{id}`` in span names.
_WORDS = re.compile(r"[a-z]{2,}(?:[-_][a-z]{2,})*|[a-z]{2,}(?:[A-Z][a-z]{2,})*")
_HEX = re.compile(r"[0-9a-fA-F]{8,}")


def path_template(path: str) -> str:
    """A URL's (decoded) path with its ids as ``{id}`` (``/my-order/Ab3x...`` -> ``/my-order/{id}``):
    a span name that says which kind of resource, never which one."""
    return "/".join("{id}" if segment and _is_id(segment) else segment for segment in path.split("/")) or "/"


def _is_id(segment: str) -> bool:
    digits = sum(c.isdigit() for c in segment)
    return (
        segment.isdigit()
        or bool(_HEX.fullmatch(segment))
        or (len(segment) >= 10 and digits > 0)
        or (len(segment) >= 16 and not _WORDS.fullmatch(segment))
    )


def resource_names(directory_url: str, directory: messages.Directory) -> dict[str, str]:
    """The directory's resource names (newNonce, newOrder, ...) by URL, the directory's own
    included: which resource a request went to, for its span."""
    names = {directory_url: "directory"}
    for name in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange", "renewalInfo"):
        with contextlib.suppress(KeyError):
            names.setdefault(str(directory[name]), name)
    return names


_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


def link_urls(response: UpstreamResponse, rel: str) -> list[str]:
    """Every ``Link`` URL with relation ``rel`` (several Link headers and several per header;
    httpx's ``Response.links`` keeps only one per relation)."""
    found: list[str] = []
    for header in response.headers.get_list("link"):
        for match in _LINK.finditer(header):
            params = match.group(2)
            rels = re.findall(r';\s*rel\s*=\s*"?([^";,]+)"?', params)
            if any(rel in r.split() for r in rels):
                found.append(urljoin(str(response.url), match.group(1)))
    return found


class AcmeClient:
    """Speaks ACME to one directory URL; safe to share between concurrent tasks."""

    def __init__(
        self,
        directory_url: str,
        *,
        ca_bundle: str | None = None,
        timeout: float = 60.0,
        proxy: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        upstream: str = "default",
    ) -> None:
        self.directory_url = directory_url
        self.upstream = upstream  # the catalog's name, for spans
        trust = tls_context(ca_bundle)
        if transport is None:
            transport = (
                httpx.AsyncHTTPTransport(verify=trust, proxy=proxy, trust_env=False)
                if proxy
                else LeanTransport(ssl_context=trust)
            )
        self.transport = transport
        self._timeouts = httpx.Timeout(timeout, connect=min(timeout, 15.0)).as_dict()
        self._directory: messages.Directory | None = None
        self._resource_names: dict[str, str] = {directory_url: "directory"}  # span attributes
        self._nonces: list[str] = []

    async def close(self) -> None:
        await self.transport.aclose()

    async def directory(self, refresh: bool = False) -> messages.Directory:
        if self._directory is None or refresh:
            response = await self._send("GET", self.directory_url)
            self._check(response)
            try:
                directory = messages.Directory.from_json(response.json())
                for needed in ("newNonce", "newAccount", "newOrder"):
                    directory[needed]
            except (ValueError, KeyError, DeserializationError) as error:
                raise UpstreamUnavailable(f"{self.directory_url} is not an ACME directory: {error}") from None
            self._directory = directory
            self._resource_names = resource_names(self.directory_url, directory)
        return self._directory

    def offers(self, resource: str) -> bool:
        """Whether the directory, as last read, names ``resource`` (True before the first read)."""
        if self._directory is None:
            return True
        try:
            self._directory[resource]
        except (KeyError, AttributeError):
            return False
        return True

    async def get(self, url: str) -> UpstreamResponse:
        """An unauthenticated GET (renewalInfo); a problem document raises ``AcmeProblem``."""
        return self._check(await self._send("GET", url))

    async def post(
        self,
        url: str,
        payload: JSONDeSerializable | dict[str, Any] | None,
        key: AccountKey,
        kid: str | None,
        accept: str | None = None,
    ) -> UpstreamResponse:
        """A JWS-signed POST (``payload`` None: POST-as-GET). ``kid`` None signs with the jwk
        (newAccount, revocation by certificate key). One retry on ``badNonce``."""
        if payload is None:
            body = b""
        elif isinstance(payload, dict):
            body = json.dumps(payload).encode()
        else:
            body = payload.json_dumps().encode()
        for attempt in (1, 2):
            try:
                nonce = await self._nonce()
            except UpstreamUnavailable as error:
                raise RequestNotSent(str(error)) from None
            signed = key.signer.sign(body, nonce, url, kid)
            headers = [(b"Content-Type", JOSE_JSON.encode())]
            if accept:
                headers.append((b"Accept", accept.encode()))
            response = await self._send("POST", url, content=signed, headers=headers)
            try:
                return self._check(response)
            except AcmeProblem as problem:
                if problem.code == "badNonce" and attempt == 1:
                    log.info("upstream rejected a nonce; retrying once", extra={"url": url})
                    continue
                raise
        raise AssertionError("unreachable")

    async def _nonce(self) -> str:
        if self._nonces:
            return self._nonces.pop()
        directory = await self.directory()
        response = await self._send("HEAD", directory["newNonce"])  # _send pools its nonce
        if response.status_code >= 400:
            self._check(response)
        if not self._nonces:
            raise UpstreamUnavailable(f"{directory['newNonce']} gave no usable Replay-Nonce")
        return self._nonces.pop()

    async def _send(
        self, method: str, url: str, content: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> UpstreamResponse:
        """One request straight on the transport: ACME needs none of ``httpx.AsyncClient``'s
        cookies, redirects, auth or URL merging, which cost more CPU than the exchange itself
        (cookie extraction alone rebuilds the request per response). On ``LeanTransport`` not
        even httpx's request and response objects."""
        with self._span(method, url) as span:
            try:
                if isinstance(self.transport, LeanTransport):
                    answer = await self.transport.send(method, url, [_USER_AGENT, *headers], content, self._timeouts)
                    response = UpstreamResponse.of_answer(url, answer)
                else:
                    response = await self._send_httpx(method, url, content, headers)
            except httpx.HTTPError as error:
                span.set_attribute("error.type", type(error).__name__)
                # No connection (or no pool slot) for it: not one byte of the request went out.
                unsent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
                kind = RequestNotSent if unsent else UpstreamUnavailable
                raise kind(f"{url} unreachable: {type(error).__name__}: {error}") from None
            span.set_attribute("http.response.status_code", response.status_code)
        nonce = response.headers.get("Replay-Nonce")
        if nonce:
            try:
                decode_b64jose(nonce)
                self._nonces.append(nonce)
            except DeserializationError:
                log.warning("upstream sent an unusable Replay-Nonce", extra={"url": url})
        return response

    async def _send_httpx(
        self, method: str, url: str, content: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> UpstreamResponse:
        """The request through any httpx transport (a proxy's; tests' wrappers)."""
        request = httpx.Request(
            method,
            url,
            headers=[_USER_AGENT, *headers],
            content=content or None,
            extensions={"timeout": self._timeouts},
        )
        response = await self.transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return UpstreamResponse.of_httpx(url, response)

    def _span(self, method: str, url: str) -> contextlib.AbstractContextManager[Any]:
        """A client span per request, inside the job's span (an order's trace) only: readiness
        checks and renewals in the background start no trace of their own."""
        if not trace.get_current_span().is_recording():
            return contextlib.nullcontext(trace.INVALID_SPAN)
        parsed = httpx.URL(url)
        template = path_template(parsed.path)
        return telemetry.span(
            f"{method} {template}",
            **{
                "http.request.method": method,
                "url.template": template,
                "server.address": parsed.host,
                "acme.upstream": self.upstream,
                "acme.resource": self._resource_names.get(url),
            },
        )

    def _check(self, response: UpstreamResponse) -> UpstreamResponse:
        """The response if it succeeded; AcmeProblem for a problem document; else unavailable."""
        if response.is_success:
            return response
        url = response.url
        retry_after = retry_after_seconds(response)
        try:
            error = messages.Error.from_json(response.json())
        except (ValueError, DeserializationError):
            if response.status_code >= 500 or response.status_code == 429:
                raise UpstreamUnavailable(
                    f"upstream {url} answered {response.status_code} without a problem document"
                ) from None
            # A bare 4xx (Pebble answers 404 for an order it no longer knows).
            error = messages.Error.from_json({"type": "about:blank", "detail": f"HTTP {response.status_code}"})
        raise AcmeProblem(error, response.status_code, url, retry_after)
