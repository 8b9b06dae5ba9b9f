"""How an ``acme-ra`` operator command reaches :class:`~acme_ra_admin.operations.AdminOperations`
(on the database, or through the admin API with ``--url``) and prints its answer (``--json``, or a
table for people); the commands themselves are in :mod:`acme_ra_admin.commands` and
:mod:`acme_ra_admin.service_commands`.

Exit codes: 0 done; 1 refused or failed (conflict, upstream refused or unreachable, not ready);
2 bad usage or configuration; 3 not found; 4 not authorized (the admin API refused the token).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

import typer

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAUTHORIZED = 4

# How long one admin API call may take (seconds): a revocation waits for the upstream CA.
API_TIMEOUT_SECONDS = 45.0

Url = Annotated[str | None, typer.Option("--url", metavar="URL", help="admin API base URL (default: ACME_RA_ADMIN_URL; "
                                         "unset: work on the database directly)", show_default=False)]
Token = Annotated[str | None, typer.Option("--token", metavar="TOKEN", help="admin API bearer token (default: ACME_RA_ADMIN_TOKEN)",
                                           show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
Limit = Annotated[int, typer.Option("--limit", metavar="N", min=1, max=1000, help="rows to show")]


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def load_settings() -> Any:
    from acme_ra.config import get_settings

    return get_settings()  # one line and exit 2 on bad configuration


def call(url: str | None, token: str | None, method: str, path: str,
         direct: Callable[[Any], Awaitable[Any]], body: dict[str, Any] | None = None,
         params: dict[str, Any] | None = None) -> Any:
    """Run one operation remotely (``method path`` on the admin API) or directly
    (``direct(AdminOperations)``); the JSON-shaped result, or :class:`CommandError`."""
    settings = load_settings()
    url = url or settings.admin_url
    if url:
        token = token or (settings.admin_token.get_secret_value() if settings.admin_token else "")
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(settings.admin_tls_ca)) \
            if settings.admin_tls_ca else True
        return _remote(url.rstrip("/"), token or "", method, path, body, params, verify)
    return asyncio.run(_direct(settings, direct))


def _remote(url: str, token: str, method: str, path: str, body: dict[str, Any] | None,
            params: dict[str, Any] | None, verify: ssl.SSLContext | bool = True) -> Any:
    """``verify``: ACME_RA_ADMIN_TLS_CA (a PEM file) for an https URL, else the system's roots."""
    import httpx

    if not token:
        raise CommandError("the admin API needs a token: --token or ACME_RA_ADMIN_TOKEN", EXIT_USAGE)
    query = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        response = httpx.request(method, f"{url}/api{path}", json=body, params=query, timeout=API_TIMEOUT_SECONDS,
                                 headers={"Authorization": f"Bearer {token}"}, verify=verify)
    except httpx.HTTPError as error:
        from acme_ra.redaction import mask_url

        raise CommandError(f"cannot reach the admin API at {mask_url(url)}: "
                           f"{mask_url(str(error)) or type(error).__name__}") from None
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if not isinstance(detail, str):
        detail = json.dumps(detail) if detail else f"HTTP {response.status_code}"
    code = {401: EXIT_UNAUTHORIZED, 403: EXIT_UNAUTHORIZED, 404: EXIT_NOT_FOUND, 400: EXIT_USAGE,
            422: EXIT_USAGE}.get(response.status_code, EXIT_FAILED)
    raise CommandError(detail, code)


def on_database(direct: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run one operation on the database (the commands that have no admin API route)."""
    return asyncio.run(_direct(load_settings(), direct))


async def _direct(settings: Any, direct: Callable[[Any], Awaitable[Any]]) -> Any:
    from acme_ra_admin.operations import AdminOperations, NotFound, OperationError

    ops = AdminOperations.from_settings(settings, pool_size=1)
    try:
        result = await direct(ops)
    except NotFound as error:
        raise CommandError(error.detail, EXIT_NOT_FOUND) from None
    except OperationError as error:
        raise CommandError(error.detail, EXIT_USAGE if error.status == 400 else EXIT_FAILED) from None
    except Exception as error:
        from sqlalchemy.exc import SQLAlchemyError

        from acme_ra.redaction import mask_url

        kind = settings.effective_database_url.split('://')[0]
        if isinstance(error, SQLAlchemyError):
            raise CommandError(f"database error ({kind}): "
                               f"{mask_url(str(error).splitlines()[0])}; did you run `acme-ra db migrate`?") from None
        if isinstance(error, OSError):  # asyncpg's refused or timed-out connect: one line, no trace
            raise CommandError(f"cannot reach the database ({kind}): "
                               f"{mask_url(str(error)) or type(error).__name__}") from None
        raise
    finally:
        await ops.close()
    return _jsonable(result)


def _jsonable(result: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [_jsonable(item) for item in result]
    return result


def run(command: Callable[[], None]) -> None:
    """Run a command body, turning :class:`CommandError` into a message and an exit code."""
    try:
        command()
    except CommandError as error:
        typer.echo(f"acme-ra: {error}", err=True)
        raise typer.Exit(error.code) from None


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=False))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Aligned columns (``(key, heading)``); lists are comma-joined, None is empty."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        if isinstance(value, dict):
            return f"{value.get('type', '')}: {value.get('detail', '')}" if "type" in value else json.dumps(value)
        return str(value).replace("T", " ", 1).removesuffix("Z") if _is_time(value) else str(value)

    text = [[heading for _, heading in columns]] + [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in text) for i in range(len(columns))]
    for line in text:
        typer.echo("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip())
    if not rows:
        typer.echo("(none)")


def facts(row: dict[str, Any], keys: Sequence[str]) -> None:
    width = max(len(k) for k in keys)
    for key in keys:
        value = row.get(key)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value)
        typer.echo(f"{key.ljust(width)}  {'' if value is None else value}")


def _is_time(value: Any) -> bool:
    return isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T"

