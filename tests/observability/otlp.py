"""An OTLP/HTTP trace receiver of the tests' own: what a collector would get from the services.

``POST /v1/traces`` with an ``ExportTraceServiceRequest`` (``application/x-protobuf``, gzip or
not), answered as a collector does. Every span is kept as a ``ReceivedSpan``; ``trace`` groups
them by trace id.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

TRACES_PATH = "/v1/traces"
# The services export every OTEL_BSP_SCHEDULE_DELAY (200 ms in these tests): spans of a finished
# request arrive well within this (seconds).
ARRIVAL_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # resource attribute service.name
    name: str
    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    parent_span_id: str  # 16 hex, "" for a root
    attributes: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0  # 0 unset, 1 ok, 2 error

    def describe(self) -> str:
        return f"{self.service}: {self.name} {self.span_id} <- {self.parent_span_id or 'root'}"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=int(span.status.code),
                    )
                )
    return spans


class OtlpReceiver:
    """Listens on 127.0.0.1:<free port>; ``endpoint`` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != TRACES_PATH:
                    self._answer(404, b"")
                    return
                try:
                    if self.headers.get("Content-Encoding", "").lower() == "gzip":
                        body = gzip.decompress(body)
                    spans = decode(body)
                except Exception as error:  # noqa: BLE001 - reported by the tests, answered 400
                    owner.errors.append(f"{type(error).__name__}: {error}")
                    self._answer(400, b"")
                    return
                with owner._lock:
                    owner.spans.extend(spans)
                    owner.requests += 1
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.snapshot() if span.trace_id == trace_id]

    def wait_for(
        self, what: str, done: Callable[[list[ReceivedSpan]], bool], timeout: float = ARRIVAL_TIMEOUT_SECONDS
    ) -> list[ReceivedSpan]:
        """Every span received, once ``done(spans)`` holds; AssertionError naming ``what`` if not in time."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({f"{s.service}: {s.name}" for s in spans})
                raise AssertionError(f"{what}: not received in {timeout:.0f}s; received {len(spans)} spans: {names}")
            time.sleep(0.1)


def broken_links(spans: list[ReceivedSpan]) -> list[str]:
    """Spans of one trace whose parent is not in it (more than one root counts too)."""
    ids = {span.span_id for span in spans}
    problems = [f"parent missing: {span.describe()}" for span in spans
                if span.parent_span_id and span.parent_span_id not in ids]
    roots = [span for span in spans if not span.parent_span_id]
    if len(roots) != 1:
        problems.append(f"{len(roots)} roots: {[span.describe() for span in roots]}")
    if len(ids) != len(spans):
        problems.append("duplicate span ids")
    return problems


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """The chain of parents of ``span`` up to the root (nearest first)."""
    by_id = {s.span_id: s for s in spans}
    chain: list[ReceivedSpan] = []
    current = by_id.get(span.parent_span_id)
    while current is not None and len(chain) < len(spans):
        chain.append(current)
        current = by_id.get(current.parent_span_id)
    return chain
