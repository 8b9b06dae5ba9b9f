"""docs/configuration.md, generated from the settings class (``acme_ra.config.Settings``): each
variable's type and default from the field, its meaning from the comment above it in config.py
or in its section (acme_ra.settings).

    python -m acme_ra_admin.configdoc            print the page
    python -m acme_ra_admin.configdoc --write    write docs/configuration.md (of this checkout)

A test fails when the committed page differs from what this renders.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from acme_ra.config import ENV_PREFIX, Settings

DOC_PATH = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"

HEADER = """\
# Configuration reference

<!-- Generated from libs/acme_ra/config.py and libs/acme_ra/settings/ by `python -m acme_ra_admin.configdoc --write`; do not
edit by hand: change the settings class (or the comment above a field) and regenerate. -->

Every setting is an environment variable with the prefix `ACME_RA_`; every service and the
`acme-ra` command read the same variables. An invalid value stops a service at start-up with
one line that names the variable. `acme-ra config check` validates the configuration and prints
the effective settings, secrets masked.

Settings marked *secret* are never printed; most have a `_FILE` twin that reads the value from a
file (a Kubernetes or Docker secret). Lists are comma-separated.

| variable | type | default | meaning |
|---|---|---|---|
"""

FOOTER = """
Tracing is off unless the standard OpenTelemetry variables ask for it (`OTEL_TRACES_EXPORTER`,
`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, ...); see [observability.md](observability.md).
"""


# One "ACME_RA_A / ACME_RA_B (or _FILE) / _C:" group of names that a comment segment is about.
_NAMES = re.compile(r"(ACME_RA_[A-Z0-9_*]+(?:\s*\(or _FILE\))?(?:\s*/\s*(?:ACME_RA_[A-Z0-9_]+|_[A-Z0-9_]+)(?:\s*\(or _FILE\))?)*)(:|\s+(?=\()|\s*$)")


def _expand(group: str, known: set[str]) -> list[str]:
    """``ACME_RA_X_HTTP_PORT / _TLS_PORT`` -> both full names; ``(or _FILE)`` adds the _FILE twin."""
    names: list[str] = []
    for part in (p.strip() for p in group.split("/")):
        twin = "(or _FILE)" in part
        part = part.replace("(or _FILE)", "").strip()
        if part.startswith("_") and names:
            previous = names[-1]
            part = next((previous[:i] + part for i in range(len(previous)) if previous[i] == "_"
                         and previous[:i] + part in known), previous + part)
        names.append(part)
        if twin:
            names.append(part + "_FILE")
    return names


def field_comments() -> dict[str, str]:
    """What the comments above the fields of ``Settings`` (config.py, acme_ra.settings) say about each variable.

    A comment block is cut into segments at each ``ACME_RA_NAME:``; a segment is about the names
    it starts with, text before any name is about every field under the block, and a field that
    no segment names shares the block of the field above it.
    """
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    comments: dict[str, str] = {}
    block: list[str] = []
    lead = full = ""
    named: dict[str, str] = {}
    for line in _settings_source().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if not block:
                lead, named = "", {}
            block.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^    ([a-z_][a-z0-9_]*)\s*:", line)
        if block:
            full = " ".join(block)
            lead, named = _segments(full, known)
            block = []
        if match and match.group(1) in Settings.model_fields:
            name = match.group(1)
            variable = ENV_PREFIX + name.upper()
            explicit = " ".join(t for t in (named.get(_wildcard(variable, named), ""), named.get(variable, "")) if t)
            if not explicit and named and lead == "" and not any(k == variable for k in named):
                explicit = _NAMES.sub("", full, count=1).strip()  # a block about other names covers it too
            if not explicit or explicit.startswith("("):
                explicit = f"{_humanise(name)} {explicit}".strip()
            comments[name] = f"{explicit.rstrip('.')}. {lead}".strip() if lead else explicit
    return comments


def _settings_source() -> str:
    """The source of ``Settings`` and of its sections (acme_ra.settings), in field order."""
    classes = [cls for cls in reversed(Settings.__mro__)
               if cls.__module__.startswith("acme_ra.") and "model_fields" in dir(cls)]
    return "\n".join(inspect.getsource(cls) for cls in classes)


def _humanise(name: str) -> str:
    words = {"ip": "IP", "eab": "EAB", "rate": "rate limit:"}
    return " ".join(words.get(w, w) for w in name.split("_"))


def _wildcard(variable: str, named: dict[str, str]) -> str:
    return next((key for key in named if key.endswith("*") and variable.startswith(key[:-1])), "")


def _segments(text: str, known: set[str]) -> tuple[str, dict[str, str]]:
    matches = list(_NAMES.finditer(text))
    lead = text[: matches[0].start()].strip() if matches else text
    named: dict[str, str] = {}
    for i, match in enumerate(matches):
        body = text[match.end(): matches[i + 1].start() if i + 1 < len(matches) else len(text)].strip()
        for name in _expand(match.group(1), known):
            named[name] = (named.get(name, "") + " " + body).strip()
    return lead, named


def meaning(name: str, comment: str) -> str:
    """The comment in Markdown; a name alone when the comments say nothing more."""
    text = comment
    text = re.sub(r"(?<![`\w])(ACME_RA_[A-Z0-9_]+)", r"`\1`", text)
    text = re.sub(r"(?<![`\w/])((?:https?|nats|postgresql\+asyncpg|sqlite\+aiosqlite)://[^\s,;)]+)", r"`\1`", text)
    text = re.sub(r"(?<![`\w])(docs/([a-z-]+)\.md)", r"[\1](\2.md)", text)
    return (text[:1].upper() + text[1:]) if text else ""


def type_text(info: FieldInfo) -> str:
    annotation = info.annotation
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if args and optional else annotation
    if typing.get_origin(base) is typing.Literal:
        text = "one of " + ", ".join(f"`{v}`" for v in typing.get_args(base))
    elif base is bool:
        text = "`true` / `false`"
    elif base is SecretStr:
        text = "*secret*"
    elif base is Path:
        text = "path"
    elif base in (int, float):
        text = "integer" if base is int else "number"
        bounds = []
        for item in info.metadata:
            for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
                value = getattr(item, attr, None)
                if isinstance(item, (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt, annotated_types.Le,
                                     annotated_types.Interval)) and value is not None:
                    bounds.append(f"{sign} {value}")
        if bounds:
            text += " " + ", ".join(bounds)
    else:
        text = "text"
    return text


def default_text(name: str, info: FieldInfo) -> str:
    default: Any = info.default
    if name == "database_url":
        return "SQLite file `STATE_DIR/acme-ra.db`"
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    if default == "":
        return "empty"
    if isinstance(default, Path) and not default.is_absolute():
        return f"`./{default}`"
    return f"`{default}`".replace("|", "\\|")


def render() -> str:
    comments = field_comments()
    rows = []
    for name, info in Settings.model_fields.items():
        variable = f"`{ENV_PREFIX}{name.upper()}`"
        text = meaning(name, comments.get(name, "")).replace("|", "\\|")
        rows.append(f"| {variable} | {type_text(info)} | {default_text(name, info)} | {text} |")
    return HEADER + "\n".join(rows) + "\n" + FOOTER


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    page = render()
    if args == ["--write"]:
        DOC_PATH.write_text(page)
        print(f"wrote {DOC_PATH}")
        return 0
    if args:
        print("usage: python -m acme_ra_admin.configdoc [--write]", file=sys.stderr)
        return 2
    sys.stdout.write(page)
    return 0



if __name__ == "__main__":
    sys.exit(main())
