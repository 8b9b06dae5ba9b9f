"""A "host" web server (Debian's nginx, Apache, HAProxy or Caddy) that redirects its
``/.well-known/acme-challenge/`` to acme-ra's upstream http-01 responder with the very lines
docs/upstream.md gives operators (its section "Upstream http-01: the central responder"), so
the doc cannot drift from what is tested. Anything else on the host answers 200 "the host's own
site" (Apache: its own 404), so that a test sees only the challenge path is redirected.

Each server runs in the foreground, as the test's child, with its configuration, logs and
temporary files in the test's directory.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "upstream.md"
SECTION = "## Upstream http-01: the central responder"
# The responder's name in the doc's lines, replaced by the test's host:port.
PLACEHOLDER = "acme-ra.example.org"
KINDS = ("nginx", "apache", "haproxy", "caddy")
BINARIES = {
    "nginx": shutil.which("nginx") or "/usr/sbin/nginx",
    "apache": shutil.which("apache2") or "/usr/sbin/apache2",
    "haproxy": shutil.which("haproxy") or "/usr/sbin/haproxy",
    "caddy": shutil.which("caddy") or "/usr/bin/caddy",
}
PACKAGES = {"nginx": "nginx", "apache": "apache2", "haproxy": "haproxy", "caddy": "caddy"}
APACHE_MODULES = Path("/usr/lib/apache2/modules")
OWN_SITE = "the host's own site"
START_TIMEOUT_SECONDS = 20.0


def doc_snippet(kind: str) -> str:
    """The fenced ``kind`` block of the doc's http-01 section."""
    text = DOC.read_text()
    assert SECTION in text, f"{DOC} has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    found = re.findall(rf"```{kind}\n(.*?)```", section, flags=re.DOTALL)
    assert len(found) == 1, f"{DOC}: expected one ```{kind} block in {SECTION!r}, found {len(found)}"
    return str(found[0])


class RedirectHost:
    """One running server on 127.0.0.1:``port`` redirecting to ``target`` (host:port)."""

    def __init__(self, kind: str, workdir: Path, port: int, target: str) -> None:
        binary = BINARIES[kind]
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is not installed: apt-get install -y {PACKAGES[kind]}")
        self.kind, self.workdir, self.port = kind, workdir, port
        workdir.mkdir(parents=True, exist_ok=True)
        self.snippet = doc_snippet(kind).replace(PLACEHOLDER, target)
        self.log_path = workdir / "server.log"
        args, env = getattr(self, f"_{kind}")()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                            env={**os.environ, **env}, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{kind} exited at start:\n{self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{kind} did not listen within {START_TIMEOUT_SECONDS}s:\n{self.logs()}")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        parts = [p.read_text(errors="replace")[-3000:] for p in sorted(self.workdir.glob("*.log"))]
        return "\n".join(parts)

    def access_log(self) -> str:
        path = self.workdir / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # One method per server: (command line, environment) after writing its configuration. ------

    def _nginx(self) -> tuple[list[str], dict[str, str]]:
        d = self.workdir
        conf = d / "nginx.conf"
        temp = "".join(f"  {name}_temp_path {d}/{name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf.write_text(
            "daemon off;\nmaster_process off;\n"
            f"pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            f"  access_log {d}/access.log;\n{temp}"
            "  server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            "    server_name _;\n"
            f"{self.snippet}\n"
            f'    location / {{ return 200 "{OWN_SITE}\\n"; }}\n'
            "  }\n"
            "}\n"
        )
        return [BINARIES["nginx"], "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)], {}

    def _apache(self) -> tuple[list[str], dict[str, str]]:
        d = self.workdir
        conf = d / "apache2.conf"
        modules = ["mpm_event", "authz_core", "alias"]
        conf.write_text(
            f'ServerRoot "{d}"\nDefaultRuntimeDir "{d}"\nPidFile "{d}/apache2.pid"\n'
            + "".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so\n" for m in modules)
            + f"Listen 127.0.0.1:{self.port}\nServerName localhost\n"
            f'ErrorLog "{d}/error.log"\n'
            f'CustomLog "{d}/access.log" "%h \\"%r\\" %>s"\n'
            f'DocumentRoot "{d}"\n'
            f"<VirtualHost 127.0.0.1:{self.port}>\n{self.snippet}</VirtualHost>\n"
        )
        return [BINARIES["apache"], "-f", str(conf), "-DFOREGROUND"], {}

    def _haproxy(self) -> tuple[list[str], dict[str, str]]:
        conf = self.workdir / "haproxy.cfg"
        conf.write_text(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
            "frontend http\n"
            f"  bind 127.0.0.1:{self.port}\n"
            f"{self.snippet}"
            f'  http-request return status 200 content-type text/plain string "{OWN_SITE}"\n'
        )
        return [BINARIES["haproxy"], "-db", "-f", str(conf)], {}

    def _caddy(self) -> tuple[list[str], dict[str, str]]:
        d = self.workdir
        conf = d / "Caddyfile"
        conf.write_text(
            "{\n  admin off\n  auto_https off\n}\n"
            f"http://:{self.port} {{\n"
            "  bind 127.0.0.1\n"
            f"{self.snippet}"
            f'  respond "{OWN_SITE}" 200\n'
            "}\n"
        )
        home = {"HOME": str(d), "XDG_DATA_HOME": str(d / "data"), "XDG_CONFIG_HOME": str(d / "config")}
        return [BINARIES["caddy"], "run", "--config", str(conf), "--adapter", "caddyfile"], home
