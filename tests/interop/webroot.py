"""A tiny web server for http-01: clients that write token files (dehydrated, uacme, acme-tiny)
put them in ``directory``; the validator GETs ``/.well-known/acme-challenge/<token>`` here."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


class ChallengeWebServer:
    """Serves the files of ``directory`` under the challenge path on ``address:port``."""

    def __init__(self, directory: Path, port: int, address: str = "127.0.0.1") -> None:
        self.directory = directory
        self.requests: list[str] = []  # the paths asked for, answered or not
        self.delay = 0.0  # seconds before each answer (a slow server)
        self.in_flight = 0  # requests being answered now
        lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                server.requests.append(self.path)
                with lock:
                    server.in_flight += 1
                try:
                    time.sleep(server.delay)
                    self.answer()
                finally:
                    with lock:
                        server.in_flight -= 1

            def answer(self) -> None:
                token = self.path.removeprefix(CHALLENGE_PREFIX)
                path = server.directory / token
                if not self.path.startswith(CHALLENGE_PREFIX) or "/" in token or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._httpd = ThreadingHTTPServer((address, port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="challenge-web", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
