"""How every upstream module reports an unusable configuration: one line naming the variable,
or the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

PREFIX = "acme-ra: invalid configuration: "


class UpstreamConfigError(Exception):
    """The upstream configuration is unusable; ``str()`` is one line for the operator."""


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], fields: dict[str, Any], origin: str) -> Model:
    """``fields`` as ``model``; the first problem as one line naming the file and the key."""
    try:
        return model.model_validate(fields)
    except ValidationError as invalid:
        details = invalid.errors()[0]
        loc = ".".join(str(part) for part in details.get("loc", ()))
        raise UpstreamConfigError(f"{PREFIX}{origin}{loc}: {details.get('msg', 'invalid')}") from None


def read_secret(path: Path, name: str) -> SecretStr:
    try:
        return SecretStr(path.read_text().strip())
    except OSError as error:
        raise UpstreamConfigError(f"{PREFIX}{name}: cannot read {path}: {error.strerror}") from None
