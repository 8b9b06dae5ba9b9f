"""A real Knot DNS server (Debian's ``knot`` package) for the upstream dns-01 recipe tests.

``knotd`` runs in the foreground with the configuration the test gives it (docs/upstream.md's
recipe with the test's port and paths), on 127.0.0.1 and a port free for UDP and TCP.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from acme_ra_tools.supervisor import free_port as _any_port

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"
KEYMGR = shutil.which("keymgr") or "/usr/sbin/keymgr"
INSTALL_HINT = "apt-get install -y knot"
# How long to wait for knotd to answer after start (seconds).
START_TIMEOUT_SECONDS = 20.0


def require_knot() -> None:
    """A missing Knot fails the test loudly, naming the install line (never a skip)."""
    for binary in (KNOTD, KEYMGR):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is not installed: the Knot recipe test needs it. Install: {INSTALL_HINT}")


def free_port() -> int:
    return _any_port(udp=True)


class Knot:
    """One ``knotd -c <conf>``; ``conf`` must listen on 127.0.0.1@``port`` and keep its
    storage and rundir under ``workdir``, where ``zone_files`` (file name -> text) are written."""

    def __init__(self, workdir: Path, conf: str, zone_files: dict[str, str], port: int, first_zone: str) -> None:
        require_knot()
        self.workdir = workdir
        self.port = port
        workdir.mkdir(parents=True, exist_ok=True)
        for name, text in zone_files.items():
            (workdir / name).write_text(text)
        self.conf = workdir / "knot.conf"
        self.conf.write_text(conf)
        self.log_path = workdir / "knotd.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [KNOTD, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"knotd exited at start:\n{self.log_path.read_text()[-3000:]}")
            try:
                if any(r.rdtype == dns.rdatatype.SOA for r in self._query(first_zone, "SOA").answer):
                    return
            except dns.exception.DNSException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"knotd did not answer within {START_TIMEOUT_SECONDS}s:\n{self.log_path.read_text()[-3000:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _query(self, name: str, rdtype: str) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", timeout=2, port=self.port)

    def txt(self, name: str) -> set[str]:
        """The TXT values Knot holds at ``name``."""
        return {
            b"".join(r.strings).decode()
            for rrset in self._query(name, "TXT").answer
            if rrset.rdtype == dns.rdatatype.TXT
            for r in rrset
        }

    def updates(self) -> int:
        """How many dynamic updates Knot applied (its log's DDNS lines)."""
        return self.log_path.read_text(errors="replace").count("DDNS, finished")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
