"""A real BIND9 (Debian's ``bind9`` package) for the upstream dns-01 tests.

One ``named -g`` on 127.0.0.1 and a free port (UDP and TCP), authoritative only (no recursion),
with zones written here; and a second ``named``, a resolver (``resolver_address``) forwarding
those zones to the first: it follows CNAMEs from one zone into another as a CA's resolver does
(an authoritative server answers only the CNAME). Pebble asks the resolver. A zone declared
``updatable`` takes RFC 2136 updates signed with the TSIG key made by ``tsig-keygen``; the
others take none. Every name in every zone has an A record 127.0.0.1 (``*`` wildcard), so
Pebble's lookups resolve.

Run the docs' recipe by hand: ``named -g -c <dir>/named.conf`` after ``Bind(dir, zones)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from acme_ra_tools.supervisor import free_port

NAMED = shutil.which("named") or "/usr/sbin/named"
TSIG_KEYGEN = shutil.which("tsig-keygen") or "/usr/sbin/tsig-keygen"
INSTALL_HINT = "apt-get install -y bind9 bind9-utils bind9-dnsutils"
KEY_NAME = "acme-ra"
# How long to wait for named to answer after start (seconds).
START_TIMEOUT_SECONDS = 20.0


def require_bind() -> None:
    """A missing BIND fails the test loudly, naming the install line (never a skip)."""
    for binary in (NAMED, TSIG_KEYGEN):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is not installed: the dns-01 tests need BIND9. Install: {INSTALL_HINT}")


@dataclass
class Zone:
    """A zone of the test server: its name, whether the TSIG key may update it, extra records
    (zone-file lines, relative names)."""

    name: str
    updatable: bool = True
    records: list[str] = field(default_factory=list)


class Bind:
    """One named process; ``port``, ``key_name``, ``secret`` (base64), ``key_file``."""

    def __init__(
        self,
        workdir: Path,
        zones: list[Zone],
        *,
        zone_statements: str | None = None,
        forwards: dict[str, str] | None = None,
    ) -> None:
        """``zone_statements``: named.conf's key include and zone statements as given (a docs
        recipe), in place of those made from ``zones`` (whose files are written either way);
        ``forwards``: zones the resolver forwards elsewhere (zone -> ``host:port``), such as a
        validation zone on another server."""
        require_bind()
        self.zone_statements = zone_statements
        self.forwards = forwards or {}
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(udp=True)
        self.zones = zones
        self.key_name = KEY_NAME
        self.key_file = workdir / "tsig.key"  # BIND's key statement, as tsig-keygen writes it
        self.key_file.write_text(
            subprocess.run(
                [TSIG_KEYGEN, "-a", "hmac-sha256", KEY_NAME], check=True, capture_output=True, text=True
            ).stdout
        )
        self.secret = self.key_file.read_text().split('secret "', 1)[1].split('"', 1)[0]
        self.secret_file = workdir / "tsig.secret"  # the base64 secret alone, for acme-ra
        self.secret_file.write_text(self.secret + "\n")
        self.secret_file.chmod(0o600)
        self.conf = workdir / "named.conf"
        self.conf.write_text(self._named_conf())
        for zone in zones:
            (workdir / f"{zone.name}.zone").write_text(_zone_file(zone))
        self.log_path = workdir / "named.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.resolver_port = free_port(udp=True)
        self.resolver_dir = workdir / "resolver"
        self.resolver_dir.mkdir(exist_ok=True)
        self.resolver_conf = self.resolver_dir / "named.conf"
        self.resolver_conf.write_text(self._resolver_conf())
        self.resolver: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def resolver_address(self) -> str:
        return f"127.0.0.1:{self.resolver_port}"

    def _resolver_conf(self) -> str:
        d = self.resolver_dir
        lines = [
            "options {",
            f'  directory "{d}";',
            f'  pid-file "{d}/named.pid";',
            f'  session-keyfile "{d}/session.key";',
            f'  managed-keys-directory "{d}";',
            f"  listen-on port {self.resolver_port} {{ 127.0.0.1; }};",
            "  listen-on-v6 { none; };",
            "  recursion yes;",
            "  allow-recursion { 127.0.0.1; };",
            "  dnssec-validation no;",
            "  max-cache-ttl 0;",
            "  max-ncache-ttl 0;",
            "};",
            "controls { };",
        ]
        for zone in self.zones:
            lines.append(
                f'zone "{zone.name}" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {self.port}; }}; }};'
            )
        for name, address in self.forwards.items():
            host, port = address.rsplit(":", 1)
            lines.append(f'zone "{name}" {{ type forward; forward only; forwarders {{ {host} port {port}; }}; }};')
        return "\n".join(lines) + "\n"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _named_conf(self) -> str:
        d = self.workdir
        lines = [
            "options {",
            f'  directory "{d}";',
            f'  pid-file "{d}/named.pid";',
            f'  session-keyfile "{d}/session.key";',
            f'  managed-keys-directory "{d}";',
            f"  listen-on port {self.port} {{ 127.0.0.1; }};",
            "  listen-on-v6 { none; };",
            "  recursion no;",
            "  notify no;",
            "  dnssec-validation no;",
            "  allow-transfer { none; };",
            "};",
            "controls { };",
        ]
        if self.zone_statements is not None:
            return "\n".join(lines) + "\n" + self.zone_statements
        lines.append(f'include "{self.key_file}";')
        for zone in self.zones:
            update = f'allow-update {{ key "{self.key_name}"; }};' if zone.updatable else "allow-update { none; };"
            lines.append(f'zone "{zone.name}" {{ type primary; file "{d}/{zone.name}.zone"; {update} }};')
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.resolver = subprocess.Popen(
            [NAMED, "-g", "-c", str(self.resolver_conf)], stdout=log, stderr=subprocess.STDOUT, cwd=self.resolver_dir
        )
        self.process = subprocess.Popen(
            [NAMED, "-g", "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"named exited at start:\n{self.log_path.read_text()[-3000:]}")
            try:
                if self.soa(self.zones[0].name):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        tail = self.log_path.read_text()[-3000:]
        raise RuntimeError(f"named did not answer within {START_TIMEOUT_SECONDS}s:\n{tail}")

    def stop(self) -> None:
        for process in (self.process, self.resolver):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def _query(self, name: str, rdtype: str, port: int | None = None) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        try:
            return dns.query.udp(query, "127.0.0.1", timeout=2, port=port or self.port)
        except dns.exception.Timeout as error:
            raise OSError(str(error)) from None

    def soa(self, zone: str) -> bool:
        return any(r.rdtype == dns.rdatatype.SOA for r in self._query(zone, "SOA").answer)

    def txt(self, name: str) -> set[str]:
        """The TXT values BIND holds at ``name`` (not following CNAMEs)."""
        return {
            b"".join(r.strings).decode()
            for rrset in self._query(name, "TXT").answer
            if rrset.rdtype == dns.rdatatype.TXT and rrset.name.to_text().rstrip(".") == name.rstrip(".")
            for r in rrset
        }

    def all_txt(self) -> dict[str, set[str]]:
        """Every TXT record in the zones' journals and files: by asking for each name that ever
        held one (the update log in named's log), plus the zone files' names."""
        names = set()
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "adding an RR at '" in line and " TXT " in line:
                names.add(line.split("adding an RR at '", 1)[1].split("'", 1)[0])
        return {name: values for name in sorted(names) if (values := self.txt(name))}


def _zone_file(zone: Zone) -> str:
    origin = zone.name.rstrip(".") + "."
    return "\n".join(
        [
            f"$ORIGIN {origin}",
            "$TTL 60",
            f"@ IN SOA ns1.{origin} hostmaster.{origin} 1 60 60 3600 0",
            f"@ IN NS ns1.{origin}",
            "ns1 IN A 127.0.0.1",
            "@ IN A 127.0.0.1",
            "* IN A 127.0.0.1",
            *zone.records,
            "",
        ]
    )
