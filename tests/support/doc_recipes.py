"""The configuration recipes of docs/, read by the tests that run them, so that the docs cannot
rot: a fenced block preceded by ``<!-- recipe: NAME -->`` (other HTML comments may come between,
such as test_docs.py's ``not-run`` marker) is recipe NAME of its page.

A recipe names an operator's addresses and paths (``192.0.2.53:53``, ``/etc/knot``); a test swaps
them for its own with ``substituted``, which fails when a value it swaps is no longer in the
recipe (the recipe changed: the test must follow it, not silently run something else).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
MARKER = re.compile(r"^<!--\s*recipe:\s*([\w.-]+)\s*-->$")


def recipe(page: str, name: str) -> str:
    """The text of recipe ``name`` of ``docs/<page>``; fails when the page has none by that name."""
    lines = (DOCS / page).read_text().splitlines()
    for i, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if not match or match.group(1) != name:
            continue
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j].strip().startswith("<!--")):
            j += 1
        if j == len(lines) or not lines[j].startswith("```"):
            raise AssertionError(f"docs/{page}: recipe {name} is not followed by a fenced block")
        end = next(k for k in range(j + 1, len(lines)) if lines[k].startswith("```"))
        return "\n".join(lines[j + 1:end]) + "\n"
    raise AssertionError(f"docs/{page} has no recipe {name!r} (<!-- recipe: {name} -->)")


def substituted(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced by its value; every key must occur."""
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"the recipe no longer contains {old!r}:\n{text}")
        text = text.replace(old, new)
    return text


def exports(text: str) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines of a shell recipe (comments ignored)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            found[name] = value
    if not found:
        raise AssertionError(f"no export line in the recipe:\n{text}")
    return found
