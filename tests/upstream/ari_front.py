"""Pebble with renewal information (RFC 9773), as an upstream CA that offers it.

This machine's Pebble (2023) predates ARI; ``AriFront`` is a small HTTP server in front of it
that serves Pebble's directory with a ``renewalInfo`` resource added, and answers
``GET <renewalInfo>/<certID>`` with the window the test sets, as a CA does: everything else
(accounts, orders, certificates) is Pebble's own, at Pebble's URLs. It records each certID asked.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from .pebble import Pebble


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AriFront:
    def __init__(self, pebble: Pebble) -> None:
        self.pebble = pebble
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.start = now + dt.timedelta(days=30)
        self.end = now + dt.timedelta(days=31)
        self.explanation_url: str | None = "https://ca.example.test/ari-explained"
        self.retry_after = 3600
        self.down = False  # answer 503 (no problem document) to renewalInfo
        self.asked: list[str] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/dir":
                    self.answer(200, front.directory())
                elif self.path.startswith("/renewal-info/"):
                    front.asked.append(self.path.removeprefix("/renewal-info/"))
                    if front.down:
                        self.answer(503, None)
                    else:
                        self.answer(200, front.window(), {"Retry-After": str(front.retry_after)})
                else:
                    self.answer(404, None)

            def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def directory_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dir"

    def directory(self) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(self.pebble.ca_bundle))
        with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
            directory: dict[str, Any] = client.get(self.pebble.directory_url).json()
        directory["renewalInfo"] = f"http://127.0.0.1:{self.server.server_address[1]}/renewal-info"
        return directory

    def window(self) -> dict[str, Any]:
        body: dict[str, Any] = {"suggestedWindow": {"start": rfc3339(self.start), "end": rfc3339(self.end)}}
        if self.explanation_url:
            body["explanationURL"] = self.explanation_url
        return body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
