"""A small async ACME client for the load generator: ES256 accounts, EAB, the nonce from the last
response, one timing per request under an endpoint label, and problem documents kept as errors.

It signs with ``cryptography`` directly and serialises with ``orjson`` so that the generator
stays cheap next to the servers it measures (its CPU time is reported with the figures).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from bench.http_client import HttpClient

JOSE = "application/jose+json"
PROBLEM = "application/problem+json"
ERROR_PREFIX = "urn:ietf:params:acme:error:"
# A badNonce answer is retried this many times with the nonce it carries (as certbot does);
# it still counts as an error.
BAD_NONCE_RETRIES = 1


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AcmeError(Exception):
    """A request that did not get the answer the flow needs (the problem document if any)."""

    def __init__(self, endpoint: str, status: int, problem: Any, detail: str = "") -> None:
        self.endpoint = endpoint
        self.status = status
        self.problem = problem
        super().__init__(detail or f"{endpoint}: HTTP {status}: {problem}")

    @property
    def problem_type(self) -> str:
        if isinstance(self.problem, dict):
            return str(self.problem.get("type", "")).removeprefix(ERROR_PREFIX)
        return f"http-{self.status}"

    def to_data(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "status": self.status, "problem": self.problem, "error": str(self)}


@dataclass
class Recorder:
    """What every client of one run shares: latencies per endpoint and the errors seen."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[dict[str, Any]] = field(default_factory=list)
    retry_after: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # header value -> count
    recording: bool = True

    def record(self, endpoint: str, seconds: float) -> None:
        if self.recording:
            self.latencies[endpoint].append(seconds)

    def error(self, error: AcmeError) -> None:
        self.errors.append(error.to_data())

    def reset(self) -> None:
        self.latencies = defaultdict(list)
        self.errors = []
        self.retry_after = defaultdict(int)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or the text for PEM

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return None  # an HTTP date: not worth parsing for a benchmark


class EcKey:
    """An ES256 account key: the JWK, its thumbprint, and raw r‖s signatures."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        numbers = self.private.public_key().public_numbers()
        # Members in lexicographic order, compact: also the RFC 7638 thumbprint input.
        self.jwk = {
            "crv": "P-256",
            "kty": "EC",
            "x": b64(numbers.x.to_bytes(32, "big")),
            "y": b64(numbers.y.to_bytes(32, "big")),
        }
        self.thumbprint = b64(hashlib.sha256(orjson.dumps(self.jwk)).digest())

    def sign(self, data: bytes) -> bytes:
        r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def make_csr(name: str) -> bytes:
    """A DER CSR for one DNS name with a fresh P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


class AcmeClient:
    """One account's client. Not safe for concurrent use: one per worker."""

    def __init__(self, http: HttpClient, directory: dict[str, Any], recorder: Recorder) -> None:
        self.http = http
        self.directory = directory
        self.recorder = recorder
        self.key = EcKey()
        self.kid: str | None = None
        self.nonce: str | None = None

    def key_authorization(self, token: str) -> str:
        return f"{token}.{self.key.thumbprint}"

    async def new_nonce(self) -> str:
        started = time.perf_counter()
        response = await self.http.request("HEAD", self.directory["newNonce"])
        self.recorder.record("newNonce", time.perf_counter() - started)
        nonce = response.headers.get("replay-nonce")
        if response.status not in (200, 204) or not nonce:
            raise AcmeError("newNonce", response.status, None, f"newNonce: HTTP {response.status}, no nonce")
        return nonce

    def _jws(self, url: str, payload: Any, nonce: str) -> bytes:
        protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
        if self.kid is None:
            protected["jwk"] = self.key.jwk
        else:
            protected["kid"] = self.kid
        protected_b64 = b64(orjson.dumps(protected))
        payload_b64 = "" if payload is None else b64(orjson.dumps(payload))
        signature = self.key.sign(f"{protected_b64}.{payload_b64}".encode())
        return orjson.dumps({"protected": protected_b64, "payload": payload_b64, "signature": b64(signature)})

    async def post(self, endpoint: str, url: str, payload: Any = None, expect: tuple[int, ...] = (200,)) -> Answer:
        """Sign and POST (``payload=None``: POST-as-GET); raise AcmeError unless ``expect``ed."""
        for attempt in range(BAD_NONCE_RETRIES + 1):
            nonce = self.nonce or await self.new_nonce()
            self.nonce = None
            body = self._jws(url, payload, nonce)
            started = time.perf_counter()
            response = await self.http.request("POST", url, body, JOSE)
            self.recorder.record(endpoint, time.perf_counter() - started)
            self.nonce = response.headers.get("replay-nonce")
            retry_after = response.headers.get("retry-after")
            if retry_after is not None and self.recorder.recording:
                self.recorder.retry_after[retry_after] += 1
            content_type = response.headers.get("content-type", "")
            if content_type.startswith(("application/json", PROBLEM)):
                parsed: Any = orjson.loads(response.body) if response.body else None
            else:
                parsed = response.body.decode("utf-8", "replace")
            if response.status in expect:
                return Answer(response.status, response.headers, parsed)
            error = AcmeError(endpoint, response.status, parsed)
            if error.problem_type == "badNonce" and attempt < BAD_NONCE_RETRIES:
                self.recorder.error(error)  # counted, then retried like a real client would
                continue
            raise error
        raise AssertionError("unreachable")

    async def register(self, eab: tuple[str, str] | None = None) -> None:
        """newAccount (with an External Account Binding when ``eab`` = (kid, base64url HMAC key))."""
        url = self.directory["newAccount"]
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if eab is not None:
            kid, hmac_key = eab
            protected_b64 = b64(orjson.dumps({"alg": "HS256", "kid": kid, "url": url}))
            payload_b64 = b64(orjson.dumps(self.key.jwk))
            mac = hmac.new(b64decode(hmac_key), f"{protected_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
            payload["externalAccountBinding"] = {"protected": protected_b64, "payload": payload_b64,
                                                 "signature": b64(mac)}
        answer = await self.post("newAccount", url, payload, expect=(200, 201))
        if not answer.location:
            raise AcmeError("newAccount", answer.status, answer.body, "newAccount: no Location header")
        self.kid = answer.location
