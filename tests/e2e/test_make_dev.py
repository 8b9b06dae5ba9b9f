"""What a new user does: ``make dev`` (the launcher, as a process), then the certbot command it
printed, run exactly as printed; Ctrl-C stops everything; a service that dies stops everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.support import certbot
from tests.support.lab import LabPorts, lab_environment

pytestmark = pytest.mark.integration

# How long the launcher may take to print its summary (seconds).
START_TIMEOUT_SECONDS = 120
# How long it may take to stop everything (seconds).
STOP_TIMEOUT_SECONDS = 30
READY_LINE = "Ctrl-C stops everything."


@dataclass
class Launcher:
    process: subprocess.Popen[bytes]
    ports: LabPorts
    state_dir: Path
    stdout_path: Path
    stderr_path: Path
    stdout: str = ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def read_until(self, text: str, timeout: float) -> None:
        """Wait until the launcher printed ``text`` on stdout (a file: no pipe to keep drained)."""
        deadline = time.monotonic() + timeout
        while text not in self.stdout:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"launcher output lacks {text!r}:\n{self.stdout}\n{self.stderr()[-20000:]}")
            time.sleep(0.2)
            self.stdout = self.stdout_path.read_text(errors="replace")

    def printed_certbot_command(self) -> str:
        commands = [line.strip() for line in self.stdout.splitlines() if "certbot certonly" in line]
        assert len(commands) == 1, self.stdout
        return commands[0]

    def child_pid(self, module: str) -> int:
        """The pid of the launcher's child that runs ``python -m <module>``."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if parent == self.process.pid and module.encode() in argv:
                return int(entry.name)
        raise LookupError(module)

    def listening_ports(self) -> list[int]:
        listening = []
        for port in (self.ports.frontend, self.ports.validator, self.ports.signer, self.ports.nats):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    listening.append(port)
        return listening

    def stop(self) -> int:
        """Ctrl-C (SIGINT to the launcher alone, as the terminal would) and wait for the exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_TIMEOUT_SECONDS)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def dev(fresh_database_url: str, tmp_path: Path) -> Iterator[Launcher]:
    """``make dev``'s command in a temp dir, on free ports; ready when it printed its summary."""
    ports = LabPorts.allocate()
    env = lab_environment(tmp_path / "var", fresh_database_url, ports)
    stdout_path, stderr_path = tmp_path / "launcher.stdout", tmp_path / "launcher.stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "acme_ra_tools.cli", "dev", "--nats-port", str(ports.nats)],
            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        )
    launcher = Launcher(process, ports, tmp_path / "var", stdout_path, stderr_path)
    try:
        launcher.read_until(READY_LINE, START_TIMEOUT_SECONDS)
        yield launcher
    finally:
        launcher.stop()


def test_printed_certbot_command_works_as_printed_and_ctrl_c_stops_everything(dev: Launcher, tmp_path: Path) -> None:
    assert f"https://localhost:{dev.ports.frontend}/acme/acme/directory" in dev.stdout
    assert str(dev.state_dir / "ca-bundle.pem") in dev.stdout
    command = dev.printed_certbot_command()
    # The machine's own CA variables stay as they are: the printed command must not need help.
    completed = subprocess.run(["bash", "-c", command], env=dict(os.environ), cwd=tmp_path,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=certbot.CERTBOT_TIMEOUT_SECONDS, check=False)
    assert completed.returncode == 0, f"{command}\n{completed.stdout}\n{completed.stderr}\n{dev.stderr()[-20000:]}"
    live = dev.state_dir / "certbot" / "config" / "live" / "myhost.localhost"
    chain = x509.load_pem_x509_certificates((live / "fullchain.pem").read_bytes())
    assert certbot.dns_names(chain[0]) == {"myhost.localhost"}
    certbot.verify_chain(chain, dev.state_dir / "ca-bundle.pem", "myhost.localhost")

    assert dev.stop() == 0
    assert dev.listening_ports() == []
    stderr = dev.stderr()
    for service in ("signer", "validator", "frontend"):
        assert f'"service":"{service}"' in stderr, "children's logs reach the terminal"
        assert (dev.state_dir / "logs" / f"{service}.log").stat().st_size > 0


def test_a_service_that_dies_stops_everything_with_a_non_zero_exit(dev: Launcher) -> None:
    os.kill(dev.child_pid("acme_ra_validator"), signal.SIGKILL)
    assert dev.process.wait(STOP_TIMEOUT_SECONDS) != 0
    assert "validator exited unexpectedly" in dev.stderr()
    assert dev.listening_ports() == []

