"""The one catalogue of ACME problem documents (RFC 8555 §6.7, RFC 7807).

Short type names internally; the ``urn:ietf:params:acme:error:`` prefix is added only when a
problem is rendered. Each type has a fixed HTTP status. Routes raise ``Problem``; one exception
handler renders it. The validator and signer record problems as plain dicts
(``{"type": "connection", "detail": "..."}``) and the frontend renders those with ``from_data``.
"""

from __future__ import annotations

from typing import Any

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"

# type -> HTTP status (Boulder's choices where the RFC leaves it open).
STATUS_BY_TYPE: dict[str, int] = {
    "accountDoesNotExist": 400,
    "alreadyReplaced": 409,
    "alreadyRevoked": 400,
    "badCSR": 400,
    "badNonce": 400,
    "badPublicKey": 400,
    "badRevocationReason": 400,
    "badSignatureAlgorithm": 400,
    "caa": 403,
    "compound": 400,
    "connection": 400,
    "dns": 400,
    "externalAccountRequired": 403,
    "incorrectResponse": 403,
    "invalidContact": 400,
    "invalidProfile": 400,
    "malformed": 400,
    "orderNotReady": 403,
    "rateLimited": 429,
    "rejectedIdentifier": 400,
    "serverInternal": 500,
    "tls": 400,
    "unauthorized": 403,
    "unsupportedContact": 400,
    "unsupportedIdentifier": 400,
    "userActionRequired": 403,
}


class Problem(Exception):
    """An ACME problem document; raise it from a route."""

    def __init__(
        self,
        type_: str,
        detail: str,
        status: int | None = None,
        *,
        subproblems: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if type_ not in STATUS_BY_TYPE:
            raise ValueError(f"unknown ACME problem type {type_!r}")
        super().__init__(detail)
        self.type = type_
        self.detail = detail
        self.status = status or STATUS_BY_TYPE[type_]
        self.subproblems = subproblems
        self.headers = headers or {}
        self.extra = extra or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": ACME_ERROR_PREFIX + self.type,
            "detail": self.detail,
            "status": self.status,
        }
        if self.subproblems:
            body["subproblems"] = [render_data(sub) for sub in self.subproblems]
        body.update(self.extra)
        return body

    def to_data(self) -> dict[str, Any]:
        """The problem as data, as stored in the database (short type, no status)."""
        data: dict[str, Any] = {"type": self.type, "detail": self.detail}
        if self.subproblems:
            data["subproblems"] = self.subproblems
        return data


def render_data(data: dict[str, Any]) -> dict[str, Any]:
    """A stored problem (short type) as it appears inside an ACME object."""
    type_ = data.get("type", "serverInternal")
    if type_ not in STATUS_BY_TYPE:
        type_ = "serverInternal"
    body: dict[str, Any] = {
        "type": ACME_ERROR_PREFIX + type_,
        "detail": data.get("detail", ""),
        "status": data.get("status", STATUS_BY_TYPE[type_]),
    }
    if "identifier" in data:
        body["identifier"] = data["identifier"]
    if data.get("subproblems"):
        body["subproblems"] = [render_data(sub) for sub in data["subproblems"]]
    return body


def malformed(detail: str, status: int | None = None) -> Problem:
    return Problem("malformed", detail, status)


def unauthorized(detail: str, status: int | None = None) -> Problem:
    return Problem("unauthorized", detail, status)


def bad_nonce(detail: str) -> Problem:
    return Problem("badNonce", detail)


def server_internal(detail: str = "the server hit an internal error; try again later") -> Problem:
    return Problem("serverInternal", detail, headers={"Retry-After": "60"})


def not_found(what: str) -> Problem:
    return Problem("malformed", f"{what} not found", 404)


def method_not_allowed(allowed: list[str]) -> Problem:
    return Problem(
        "malformed", "method not allowed", 405, headers={"Allow": ", ".join(sorted(allowed))}
    )
