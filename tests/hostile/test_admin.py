"""The admin listener and every service's /readyz, as an attacker (or an unlucky operator) meets
them: bodies refused before they are read, no database words or passwords in any answer or log.

The shared ``lab`` runs the admin service as ``make dev`` does. Start-up with a database that
refuses us (a URL with a password) needs processes of the test's own: each service is started
alone with that configuration, and its answers and log lines are read.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from acme_ra.config import ENV_PREFIX
from acme_ra_admin.console import SESSION_COOKIE
from acme_ra_admin.gate import MAX_BODY_BYTES
from acme_ra_tools.supervisor import free_port, settings_from_env
from tests.support.lab import Lab, base_environment

from .conftest import Timer, assert_still_up

pytestmark = pytest.mark.integration

HUNDRED_MB = 100 * 1024 * 1024
# A password no answer or log line may show.
PASSWORD = "Hunter2-SECRET-pw"
BAD_DATABASE_URL = f"postgresql+asyncpg://acme_ra_nobody:{PASSWORD}@127.0.0.1:5432/acme_ra_nowhere"
BAD_NATS_URL = f"nats://natsuser:{PASSWORD}@127.0.0.1:1"
# Words of a database driver's or Python's error that no answer may carry.
INTERNAL_WORDS = ("Traceback", "sqlalchemy", "asyncpg", "psycopg", "aiosqlite", "Errno", "role ", "password",
                  "acme_ra_nobody", "127.0.0.1:5432")
# How long a process of our own may take to answer its /healthz (seconds).
START_SECONDS = 30


def admin_url(lab: Lab) -> str:
    return f"http://{settings_from_env(lab.topology.child_env).admin_listen}"


def acme_ra(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "acme_ra_tools.cli", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def token(lab: Lab) -> str:
    done = acme_ra(["admin-token", "create", "--label", "hostile", "--json"], dict(lab.topology.child_env))
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["token"])


def raw_exchange(url: str, head: str, body: bytes = b"", wait: float = 10) -> tuple[bytes, bool]:
    """Send ``head`` (and ``body``) on a fresh connection, send nothing more, and read until the
    server closes; the answer and whether the server closed the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + body)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            return answer, False
    return answer, True


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def assert_no_internal_detail(text: str) -> None:
    for word in INTERNAL_WORDS + (PASSWORD,):
        assert word not in text, f"{word!r} in {text[:2000]}"


@pytest.mark.parametrize("path, headers, declared, status", [
    ("/api/eab-keys", "", HUNDRED_MB, 413),  # the size is checked first (no database asked)
    ("/login", "", HUNDRED_MB, 413),  # the login form: no session to check, the size is
    ("/eab-keys", "", HUNDRED_MB, 413),
    # Within the cap, but never sent: the answer comes without waiting for it.
    ("/api/eab-keys", "", MAX_BODY_BYTES, 401),
    ("/api/certificates/x/revoke", "Authorization: Bearer acmera_wrong\n", MAX_BODY_BYTES, 401),
    ("/eab-keys", "", MAX_BODY_BYTES, 303),  # a console form without a session: to the login page
    ("/eab-keys", f"Cookie: {SESSION_COOKIE}=forged.1.x\n", MAX_BODY_BYTES, 303),
])
def test_a_declared_body_is_answered_at_once_without_being_read(
    lab: Lab, path: str, headers: str, declared: int, status: int
) -> None:
    head = (f"POST {path} HTTP/1.1\nHost: admin\nContent-Type: application/json\n{headers}"
            f"Content-Length: {declared}\n\n")
    with Timer() as timer:
        answer, closed = raw_exchange(admin_url(lab), head)
    timer.assert_quick(2)
    assert status_of(answer) == status and closed, answer[:500]
    assert b"connection: close" in answer.lower()
    assert_no_internal_detail(answer.decode(errors="replace"))
    assert_still_up(lab)


def test_with_a_token_a_100_mb_body_is_413_at_once(lab: Lab, token: str) -> None:
    head = (f"POST /api/eab-keys HTTP/1.1\nHost: admin\nAuthorization: Bearer {token}\n"
            f"Content-Type: application/json\nContent-Length: {HUNDRED_MB}\n\n")
    with Timer() as timer:
        answer, closed = raw_exchange(admin_url(lab), head)
    timer.assert_quick(2)
    assert status_of(answer) == 413 and closed, answer[:500]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}


def test_a_chunked_body_past_the_cap_is_413(lab: Lab, token: str) -> None:
    size = MAX_BODY_BYTES + 1024
    chunk = f"{size:x}\r\n".encode() + b"{" + b" " * (size - 1) + b"\r\n"
    head = (f"POST /api/eab-keys HTTP/1.1\nHost: admin\nAuthorization: Bearer {token}\n"
            "Content-Type: application/json\nTransfer-Encoding: chunked\n\n")
    with Timer() as timer:
        answer, _closed = raw_exchange(admin_url(lab), head, chunk)
    timer.assert_quick(2)
    assert status_of(answer) == 413, answer[:500]
    with httpx.Client(base_url=admin_url(lab), trust_env=False, timeout=10) as client:
        keys = client.get("/api/eab-keys", headers={"Authorization": f"Bearer {token}"}).json()
    assert not [k for k in keys if k["label"].startswith("{")]
    assert_still_up(lab)


def test_readyz_of_every_service_says_only_fixed_words(lab: Lab) -> None:
    settings = settings_from_env(lab.topology.child_env)
    urls = {
        "frontend": lab.directory_url.split("/acme/", 1)[0] + "/readyz",
        "validator": f"http://{settings.validator_listen}/readyz",
        "signer": f"http://{settings.signer_listen}/readyz",
        "admin": f"{admin_url(lab)}/readyz",
    }
    for service, url in urls.items():
        answer = httpx.get(url, verify=ssl.create_default_context(cafile=lab.ca_bundle), trust_env=False, timeout=10)
        assert answer.status_code == 200, (service, answer.text)
        assert_no_internal_detail(answer.text)
        assert "://" not in answer.text, (service, answer.text)


def test_the_session_cookie_is_not_secure_on_a_forwarded_proto_from_anyone(lab: Lab, token: str) -> None:
    """ACME_RA_TRUSTED_PROXIES is empty in the lab: a client's own X-Forwarded-Proto counts for nothing
    (the trusted proxy's case: tests/admin/test_admin_gate.py and the process test below)."""
    with httpx.Client(base_url=admin_url(lab), trust_env=False, timeout=10) as client:
        answer = client.post("/login", data={"token": token}, headers={"X-Forwarded-Proto": "https"})
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(SESSION_COOKIE) and "secure" not in cookie.lower()


# Processes of the test's own ----------------------------------------------------------------


def own_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = base_environment() | {f"{ENV_PREFIX}STATE_DIR": str(tmp_path / "var"), f"{ENV_PREFIX}LOG_LEVEL": "debug"}
    for name in ("LISTEN", "ADMIN_LISTEN", "VALIDATOR_LISTEN", "SIGNER_LISTEN", "METRICS_LISTEN"):
        env[f"{ENV_PREFIX}{name}"] = f"127.0.0.1:{free_port()}"
    return env | {f"{ENV_PREFIX}{k.upper()}": v for k, v in settings.items()}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    """``start(module, env)`` runs ``python -m module``; all are stopped (by their pid) afterwards."""
    children: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(module: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{module}.log"
        with log.open("wb") as out:
            child = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        children.append((child, log))
        return child, log

    yield run
    for child, _log in children:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)


def wait_healthy(url: str, child: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert child.poll() is None, log.read_text(errors="replace")
        try:
            if httpx.get(f"{url}/healthz", trust_env=False, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer /healthz:\n{log.read_text(errors='replace')}")


def test_the_admin_service_on_a_database_that_refuses_us_shows_no_password(tmp_path: Path, start: object) -> None:
    env = own_env(tmp_path, database_url=BAD_DATABASE_URL, nats_url=BAD_NATS_URL)
    child, log = start("acme_ra_admin", env)  # type: ignore[operator]
    url = f"http://{env[ENV_PREFIX + 'ADMIN_LISTEN']}"
    wait_healthy(url, child, log)
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as client, Timer() as timer:
        ready = client.get("/readyz")
        api = client.get("/api/eab-keys", headers={"Authorization": "Bearer acmera_" + "x" * 43})
        login = client.post("/login", data={"token": "acmera_" + "x" * 43})
    timer.assert_quick()
    assert ready.status_code == 503 and ready.json() == {"status": "unavailable", "failed": {"database": "unavailable"}}
    assert api.status_code == 503 and api.json() == {"detail": "the database is unavailable"}
    assert login.status_code == 503 and login.json() == {"detail": "the database is unavailable"}
    time.sleep(2.5)  # a NATS reconnect attempt or two (logged)
    child.terminate()
    child.wait(10)
    text = log.read_text(errors="replace")
    assert "readiness: the database does not answer" in text, text
    assert PASSWORD not in text
    for answer in (ready, api, login):
        assert_no_internal_detail(answer.text)


@pytest.mark.parametrize("module", ["acme_ra_frontend", "acme_ra_validator", "acme_ra_signer"])
def test_start_up_errors_show_no_password(lab: Lab, tmp_path: Path, start: object, module: str) -> None:
    tls = lab.state_dir / "tls"  # the frontend's certificate, so that it gets as far as NATS
    env = own_env(tmp_path, database_url=BAD_DATABASE_URL, nats_url=BAD_NATS_URL,
                  tls_cert_file=str(tls / "frontend.crt"), tls_key_file=str(tls / "frontend.key"))
    child, log = start(module, env)  # type: ignore[operator]
    try:
        child.wait(8)  # each retries NATS (the frontend for 30 s, then exits): what they said by then
    except subprocess.TimeoutExpired:
        child.kill()  # the signer, still starting, does not stop on SIGTERM; not what is tested here
        child.wait(10)
    text = log.read_text(errors="replace")
    assert text.strip(), "the service said nothing"
    assert PASSWORD not in text, text


def test_the_session_cookie_is_secure_behind_a_trusted_tls_proxy(lab: Lab, token: str, tmp_path: Path,
                                                                   start: object) -> None:
    """A second admin service on the lab's database, told that 127.0.0.1 is its TLS proxy."""
    env = dict(lab.topology.child_env) | {f"{ENV_PREFIX}ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
                                          f"{ENV_PREFIX}TRUSTED_PROXIES": "127.0.0.1/32"}
    child, log = start("acme_ra_admin", env)  # type: ignore[operator]
    url = f"http://{env[ENV_PREFIX + 'ADMIN_LISTEN']}"
    wait_healthy(url, child, log)
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
        proxied = client.post("/login", data={"token": token}, headers={"X-Forwarded-Proto": "https"})
        direct = client.post("/login", data={"token": token})
    assert proxied.status_code == direct.status_code == 303
    assert "; secure" in proxied.headers["set-cookie"].lower()
    assert "secure" not in direct.headers["set-cookie"].lower()
