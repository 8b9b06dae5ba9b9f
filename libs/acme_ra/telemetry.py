"""Logging and tracing set-up shared by the services.

Logs are one JSON object per line on stderr. Tracing is off unless the standard ``OTEL_*``
variables ask for it (``OTEL_TRACES_EXPORTER`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson

from acme_ra.redaction import mask_url

# Record attributes that are not event fields (uvicorn adds an ANSI-coloured copy of the message).
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"color_message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                event[key] = value
        # The span the event happened in (an order's trace), unless the event names its own.
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            event.setdefault("trace_id", format(span_context.trace_id, "032x"))
            event.setdefault("span_id", format(span_context.span_id, "016x"))
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        for key, value in event.items():  # a password inside a URL, whoever quoted it
            if isinstance(value, str) and "://" in value:
                event[key] = mask_url(value)
        return orjson.dumps(event, default=str).decode()


def setup_logging(service: str, level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "nats", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def tracing_requested() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    return exporter not in ("", "none") or bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


# Tracing ------------------------------------------------------------------------------------
#
# One trace per order: newOrder starts a root span whose W3C traceparent is stored with the order;
# every later span about that order (any service) is started with that context as parent, and
# jobs carry the publishing span's traceparent in their NATS headers.

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_enabled = False
tracer = trace.get_tracer("acme_ra")


def init_tracing(service: str) -> bool:
    """Install an SDK tracer provider when OTEL_* asks for one; returns whether tracing is on."""
    global _enabled
    if not tracing_requested():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    name = os.environ.get("OTEL_SERVICE_NAME") or f"acme-ra-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    kinds = [k.strip() for k in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if k.strip()]
    for kind in kinds:
        exporter: SpanExporter
        if kind == "console":
            exporter = ConsoleSpanExporter()
        elif kind == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                raise SystemExit(
                    f"acme-ra: invalid configuration: OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: "
                    "only http/protobuf is supported"
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            raise SystemExit(f"acme-ra: invalid configuration: OTEL_TRACES_EXPORTER={kind!r}: use otlp, console or none")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def tracing_enabled() -> bool:
    return _enabled


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def context_from_traceparent(traceparent: str | None) -> otel_context.Context | None:
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def span(name: str, traceparent: str | None = None, new_trace: bool = False, /, **attributes: Any) -> Iterator[Any]:
    """A span under the order's trace (``traceparent``), the current span, or a new root."""
    if not _enabled:
        yield trace.INVALID_SPAN
        return
    parent = otel_context.Context() if new_trace else context_from_traceparent(traceparent)
    with tracer.start_as_current_span(name, context=parent, attributes={k: v for k, v in attributes.items() if v is not None}) as current:
        yield current


def current_span() -> Any:
    """The active span (a no-op span when tracing is off)."""
    return trace.get_current_span()
