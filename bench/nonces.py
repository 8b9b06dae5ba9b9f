"""newNonce requests per second: ``HEAD <newNonce>`` over keep-alive connections.

With ``wrk`` installed (``apt-get install -y wrk``; C, one thread) it does the talking; without
it, our own client does (``python -m bench.nonces URL SECONDS CONNECTIONS [CA]``: raw asyncio +
uvloop, pre-built requests, HEAD answers have no body). Either way the result says which.
The generator must not be the bottleneck: wrk easily outruns one Python frontend process; our
own client is slower and its figure is a lower bound.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.counters import InstructionCounters

# Connections kept open to the server during the measurement.
DEFAULT_CONNECTIONS = 32
DEFAULT_SECONDS = 5.0
_REQUESTS_PER_SECOND = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_TOTAL = re.compile(r"(\d+) requests in")
_LATENCY = re.compile(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)")


def measure(url: str, seconds: float = DEFAULT_SECONDS, connections: int = DEFAULT_CONNECTIONS,
            ca_bundle: Path | None = None, server_pid: int | None = None) -> dict[str, Any]:
    """newNonce requests per second; with ``server_pid``, also the server's instructions per request."""
    counters = InstructionCounters({"server": server_pid} if server_pid else {})
    counters.start()
    try:
        result = _measure(url, seconds, connections, ca_bundle)
    finally:
        counted = counters.stop()
    requests = result.get("requests")
    if "server" in counted and requests:
        result["server_kinstr_per_request"] = round(counted["server"] / requests / 1000, 1)
    return result


def _measure(url: str, seconds: float, connections: int, ca_bundle: Path | None) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk:
        return _with_wrk(wrk, url, seconds, connections)
    argv = [sys.executable, "-m", "bench.nonces", url, str(seconds), str(connections)]
    if ca_bundle:
        argv.append(str(ca_bundle))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        return {"tool": "bench.nonces", "error": done.stderr.strip()[-2000:]}
    return dict(json.loads(done.stdout))


def _with_wrk(wrk: str, url: str, seconds: float, connections: int) -> dict[str, Any]:
    result = _wrk_once(wrk, url, seconds, connections, "HEAD")
    if result.get("requests_per_second") == 0 and not result.get("socket_errors"):
        # wrk's parser waits for a body after a HEAD answer that has no Content-Length (Go's
        # net/http, so Pebble): GET newNonce (204, RFC 8555 §7.2) is the same work for the server.
        result = _wrk_once(wrk, url, seconds, connections, "GET")
        result["tool"] += "; GET: wrk cannot frame this server's HEAD answers"
    return result


def _wrk_once(wrk: str, url: str, seconds: float, connections: int, method: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(f'wrk.method = "{method}"\n')
        script.flush()
        argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
                "-s", script.name, url]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    output = done.stdout + done.stderr
    found = _REQUESTS_PER_SECOND.search(output)
    result: dict[str, Any] = {"tool": f"wrk -t1 ({method}, keep-alive)", "connections": connections,
                              "seconds": seconds}
    if done.returncode != 0 or not found:
        result["error"] = output.strip()[-2000:]
        return result
    result["requests_per_second"] = round(float(found.group(1)))
    total = _TOTAL.search(output)
    result["requests"] = int(total.group(1)) if total else None
    non_2xx = _NON_2XX.search(output)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    socket_errors = _SOCKET_ERRORS.search(output)
    result["socket_errors"] = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    latency = _LATENCY.search(output)
    if latency:
        result["latency_avg"] = latency.group(1)
    return result


# Our own client (no wrk) ----------------------------------------------------------------------


async def _own_client(url: str, seconds: float, connections: int, ca_bundle: str | None) -> dict[str, Any]:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    context = None
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl._create_unverified_context()
    request = f"HEAD {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    counts = {"ok": 0, "other": 0}
    deadline = time.monotonic() + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                counts["ok" if head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 204")) else "other"] += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.monotonic() - started
    return {"tool": "bench.nonces (own asyncio client, HEAD, keep-alive)", "connections": connections,
            "seconds": seconds, "requests_per_second": round(counts["ok"] / elapsed), "non_2xx": counts["other"],
            "socket_errors": 0, "requests": counts["ok"] + counts["other"]}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4):
        print("usage: python -m bench.nonces URL SECONDS CONNECTIONS [CA_BUNDLE]", file=sys.stderr)
        return 2
    url, seconds, connections = args[0], float(args[1]), int(args[2])
    ca_bundle = args[3] if len(args) == 4 else None
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        result = asyncio.run(_own_client(url, seconds, connections, ca_bundle))
    else:
        result = uvloop.run(_own_client(url, seconds, connections, ca_bundle))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
