"""Signed zones served by a real BIND9, and real unbound resolvers, for the DNSSEC tests.

The lab signs its zones itself (``dnssec-keygen``, ``dnssec-signzone``, ECDSA P-256) under a
private trust anchor at the TLD, ``test.`` (its KSK's DS record, in ``anchors_file``), as the
root's would be; below it, e.g.:

- ``signed.test.``: signed, its DS in the parent: answers are *secure*;
- ``bogus.test.``: signed, its DS in the parent, then records changed after signing
  (``tamper``): the signatures no longer verify, answers are *bogus* (SERVFAIL + EDE);
- ``unsigned.test.``: delegated without DS (the parent's NSEC proves it): *insecure*.

One ``named -g`` (authoritative, no recursion) serves the four zones on a free loopback port;
``validating`` is an unbound that validates with the lab's trust anchor (``ede: yes``) and
``non_validating`` one that does not (``module-config: iterator``), each on its own free port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from acme_ra_tools.supervisor import free_port
from tests.support.bind import NAMED

DNSSEC_KEYGEN = shutil.which("dnssec-keygen") or "/usr/bin/dnssec-keygen"
DNSSEC_SIGNZONE = shutil.which("dnssec-signzone") or "/usr/bin/dnssec-signzone"
UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
INSTALL_HINT = "apt-get install -y bind9 bind9-utils bind9-dnsutils unbound"
ANCHOR = "test."
ALGORITHM = "ECDSAP256SHA256"
# How long to wait for named or unbound to answer after start (seconds).
START_TIMEOUT_SECONDS = 30.0


def require_dnssec_tools() -> None:
    """A missing tool fails the test loudly, naming the install line (never a skip)."""
    for binary in (NAMED, DNSSEC_KEYGEN, DNSSEC_SIGNZONE, UNBOUND):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is not installed: the DNSSEC tests need it. Install: {INSTALL_HINT}")


@dataclass
class LabZone:
    """One zone: its name (absolute), records (zone-file lines, names relative to the zone),
    whether it is signed, and text replaced in the signed file (makes it bogus)."""

    name: str
    records: list[str] = field(default_factory=list)
    signed: bool = True
    tamper: dict[str, str] = field(default_factory=dict)


def _zone_text(zone: LabZone, extra: list[str]) -> str:
    return "\n".join([
        f"$ORIGIN {zone.name}",
        "$TTL 60",
        f"@ IN SOA ns1.{ANCHOR} hostmaster.{zone.name} 1 60 60 3600 60",
        f"@ IN NS ns1.{ANCHOR}",
        *zone.records,
        *extra,
        "",
    ])


class DnssecLab:
    """``validating`` / ``non_validating``: (ip, port) of the two unbound resolvers."""

    def __init__(self, workdir: Path, children: dict[str, LabZone]) -> None:
        """``children``: the zones below ``test.`` by label (signed, bogus, unsigned)."""
        require_dnssec_tools()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_path = workdir / "servers.log"
        self.children = children
        parent_records = ["ns1 IN A 127.0.0.1"]
        zone_files: dict[str, Path] = {}
        for label, child in children.items():
            zone_files[child.name] = self._write_zone(child, [])
            parent_records.append(f"{label} IN NS ns1.{ANCHOR}")
            if child.signed:
                parent_records.extend(self._dsset(child.name).splitlines())
        parent = LabZone(ANCHOR, parent_records)
        zone_files[ANCHOR] = self._write_zone(parent, [])
        self.anchors_file = workdir / "anchors.ds"  # the parent's KSK DS: ACME_RA_DNSSEC_TRUST_ANCHORS_FILE
        self.anchors_file.write_text(self._dsset(ANCHOR))
        self.bind_port = free_port(udp=True)
        self._start_named(zone_files)
        self.validating = ("127.0.0.1", self._start_unbound("validating", validate=True))
        self.non_validating = ("127.0.0.1", self._start_unbound("plain", validate=False))

    def _write_zone(self, zone: LabZone, extra: list[str]) -> Path:
        path = self.workdir / f"{zone.name}zone"
        path.write_text(_zone_text(zone, extra))
        if not zone.signed:
            return path
        keys = self.workdir / "keys"
        keys.mkdir(exist_ok=True)
        for flags in (["-f", "KSK"], []):
            subprocess.run([DNSSEC_KEYGEN, "-q", "-a", ALGORITHM, *flags, "-K", str(keys), "-n", "ZONE", zone.name],
                           check=True, capture_output=True)
        signed = path.with_suffix(".signed")
        subprocess.run(
            [DNSSEC_SIGNZONE, "-S", "-K", str(keys), "-d", str(self.workdir), "-o", zone.name,
             "-f", str(signed), str(path)],
            check=True, capture_output=True, cwd=self.workdir,
        )
        text = signed.read_text()
        for old, new in zone.tamper.items():
            assert old in text, f"{old!r} is not in the signed {zone.name}"
            text = text.replace(old, new)
        signed.write_text(text)
        return signed

    def _dsset(self, name: str) -> str:
        """The DS records dnssec-signzone wrote for ``name`` (dsset-<name>)."""
        return (self.workdir / f"dsset-{name}").read_text()

    def _start_named(self, zone_files: dict[str, Path]) -> None:
        d = self.workdir
        conf = d / "named.conf"
        conf.write_text("\n".join([
            "options {",
            f'  directory "{d}";',
            f'  pid-file "{d}/named.pid";',
            f'  session-keyfile "{d}/session.key";',
            f'  managed-keys-directory "{d}";',
            f"  listen-on port {self.bind_port} {{ 127.0.0.1; }};",
            "  listen-on-v6 { none; };",
            "  recursion no;",
            "  notify no;",
            "  dnssec-validation no;",
            "};",
            "controls { };",
            *(f'zone "{name}" {{ type primary; file "{path}"; }};' for name, path in zone_files.items()),
            "",
        ]))
        self._spawn([NAMED, "-g", "-c", str(conf)], ("127.0.0.1", self.bind_port), ANCHOR)

    def _start_unbound(self, name: str, *, validate: bool) -> int:
        port = free_port(udp=True)
        d = self.workdir / f"unbound-{name}"
        d.mkdir(exist_ok=True)
        stubs = [ANCHOR] + [child.name for child in self.children.values()]
        lines = [
            "server:",
            f"  interface: 127.0.0.1@{port}",
            f"  port: {port}",
            "  do-ip6: no",
            "  access-control: 127.0.0.0/8 allow",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{d}"',
            f'  pidfile: "{d}/unbound.pid"',
            "  use-syslog: no",
            "  verbosity: 1",
            "  do-not-query-localhost: no",
            '  local-zone: "test." nodefault',  # RFC 6761 names are blocked by default
            "  ede: yes",
            "  val-log-level: 2",
        ]
        if validate:
            lines += ['  module-config: "validator iterator"', f'  trust-anchor-file: "{self.anchors_file}"']
        else:
            lines += ['  module-config: "iterator"']
        lines += ["remote-control:", "  control-enable: no"]
        for stub in stubs:
            lines += ["stub-zone:", f'  name: "{stub}"', f"  stub-addr: 127.0.0.1@{self.bind_port}"]
        conf = d / "unbound.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._spawn([UNBOUND, "-d", "-c", str(conf)], ("127.0.0.1", port), ANCHOR)
        return port

    def _spawn(self, argv: list[str], address: tuple[str, int], probe: str) -> None:
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.processes.append(process)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{argv[0]} exited at start:\n{self.log_path.read_text()[-3000:]}")
            try:
                dns.query.udp(dns.message.make_query(probe, "SOA"), address[0], timeout=1, port=address[1])
                return
            except (OSError, dns.exception.DNSException):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{argv[0]} did not answer within {START_TIMEOUT_SECONDS}s:\n"
                           f"{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
