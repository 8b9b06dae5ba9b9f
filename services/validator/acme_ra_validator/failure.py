"""A challenge that did not validate, carried as a problem as data (``{"type", "detail"}``).

Only the frontend renders problems; the validator records them in the database as plain dicts.
"""

from __future__ import annotations

from typing import Any

from acme_ra.protocol.problems import STATUS_BY_TYPE


class ValidationFailure(Exception):
    """Raised by a check; becomes the challenge's ``error``."""

    def __init__(self, type_: str, detail: str) -> None:
        if type_ not in STATUS_BY_TYPE:
            raise ValueError(f"unknown ACME problem type {type_!r}")
        super().__init__(detail)
        self.type = type_
        self.detail = detail

    def to_data(self) -> dict[str, Any]:
        return {"type": self.type, "detail": self.detail}
