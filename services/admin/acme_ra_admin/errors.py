"""What an admin operation answers when it cannot do what it was asked: each error carries the
HTTP status the API answers with (the console shows its words; ``acme-ra`` maps it to an exit code)."""

from __future__ import annotations


class OperationError(Exception):
    """Something the caller asked for cannot be done; ``status`` is the HTTP status to answer."""

    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(OperationError):
    status = 404


class Conflict(OperationError):
    status = 409


class Rejected(OperationError):
    """The upstream CA refused."""

    status = 502


class Unavailable(OperationError):
    status = 503
