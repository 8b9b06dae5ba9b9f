"""docs/ stays true: configuration.md is what the settings class renders, every link between
pages resolves, and the shell blocks of every page run, in order, against a running acme-ra.

A page's ```sh blocks run in one bash (``set -euo pipefail``), as a reader following the page
would run them, in a directory where ``.venv``, ``tests`` and ``var`` are this checkout's and the
test topology's, with the topology's settings in the environment and acme-ra on PATH. Addresses
the pages write for ``make dev`` stand for the topology's (see ``substitutions``). A block preceded by
``<!-- not-run: reason -->`` is skipped (it needs Kubernetes, a real upstream CA, a client not
installed here, or runs until Ctrl-C); ``<!-- not-run-on: postgresql (reason) -->`` skips it on
that database only.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from acme_ra.config import ENV_PREFIX
from acme_ra_admin import configdoc
from tests.support import certbot, database

from .conftest import AdminService

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
# How long one page's blocks may take (seconds): certbot runs take a few seconds each.
PAGE_TIMEOUT_SECONDS = 600
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*not-run(-on)?:\s*(.+?)\s*-->$")


@dataclass
class Block:
    page: str
    line: int
    language: str
    code: str
    skip: str | None  # why it does not run here, or None


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match.group(1):
            i += 1
            continue
        start, language = i, match.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        skip = None
        if marker and not marker.group(1) or marker and marker.group(2).split()[0] == database.backend():
            skip = marker.group(2)
        found.append(Block(path.name, start + 1, language, "\n".join(lines[start + 1:end]), skip))
        i = end + 1
    return found


def test_configuration_reference_is_generated_from_the_settings() -> None:
    assert (DOCS / "configuration.md").read_text() == configdoc.render(), (
        "docs/configuration.md is stale: run python -m acme_ra_admin.configdoc --write")


def test_every_setting_is_in_the_configuration_reference() -> None:
    from acme_ra.config import Settings

    page = (DOCS / "configuration.md").read_text()
    assert all(f"`{ENV_PREFIX}{name.upper()}`" in page for name in Settings.model_fields)


def test_links_between_pages_resolve() -> None:
    broken = []
    for page in PAGES + [ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.name}: {target}")
    assert not broken


def test_every_not_run_marker_says_why() -> None:
    for page in PAGES:
        for block in blocks(page):
            if block.skip is not None:
                assert len(block.skip) > 10, f"{page.name}:{block.line}: say why the block cannot run"


def substitutions(service: AdminService) -> dict[str, str]:
    """What the pages write for make dev -> the test topology's."""
    lab = service.lab
    return {
        "https://localhost:8443": lab.topology.settings.external_url,
        "--http-01-port 80": f"--http-01-port {lab.ports.http01}",
        "http://127.0.0.1:9443": service.url,
    }


def sandbox(service: AdminService, tmp_path: Path) -> Path:
    """A working directory like a checkout where make dev runs: .venv, tests, var."""
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "tests").symlink_to(ROOT / "tests")
    (work / "var").symlink_to(service.lab.state_dir)
    return work


RUNNABLE_PAGES = [p.name for p in PAGES if any(b.language == "sh" and b.skip is None for b in blocks(p))]


def test_the_pages_have_runnable_blocks() -> None:
    assert {"install.md", "admin.md", "users.md", "policy.md", "database.md"} <= set(RUNNABLE_PAGES)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_the_shell_blocks_of_a_page_run(page: str, admin_service: AdminService, tmp_path: Path) -> None:
    work = sandbox(admin_service, tmp_path)
    script = ["set -euo pipefail"]
    for block in blocks(DOCS / page):
        if block.language != "sh" or block.skip is not None:
            continue
        code = block.code
        for written, actual in substitutions(admin_service).items():
            code = code.replace(written, actual)
        script += [f"echo '>>> {page}:{block.line}' >&2", code]
    env = certbot.trust_environment(admin_service.lab.ca_bundle)
    env = {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX)} | admin_service.env
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        env.pop(name, None)  # the pages say what to trust
    env["PATH"] = f"{work / '.venv' / 'bin'}:{env.get('PATH', os.defpath)}"  # acme-ra is installed
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=PAGE_TIMEOUT_SECONDS, check=False)
    assert done.returncode == 0, (
        f"a block of docs/{page} failed (exit {done.returncode}); the last '>>>' line names it\n"
        f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-10000:]}")
