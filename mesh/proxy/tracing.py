"""W3C trace context for every proxied request, and OpenTelemetry spans when asked for.

Each hop keeps the caller's trace id and flags and gets a new span id, so the upstream sees
the proxy as the parent span (``traceparent: 00-<trace id>-<span id>-<flags>``); a request
without a valid ``traceparent`` starts a new, sampled trace. ``tracestate`` passes through.

OpenTelemetry is optional: spans are exported only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
and the SDK and its OTLP/HTTP exporter import; the SDK is imported lazily, here and only then.

:class:`Tracer` and :class:`Span` are mypyc traits (their implementations name them as bases):
the forwarder calls them natively, not by name, for every request.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from typing import Any, Final

from mypy_extensions import trait

log = logging.getLogger("simmesh.proxy")
_ids: Final = random.Random(int.from_bytes(os.urandom(16), "big"))
_HEX: Final = frozenset("0123456789abcdef")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid version-00 header, else None."""
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if version == "ff" or (version == "00" and len(value) != 55):
        return None
    if not _HEX.issuperset(value[:2] + trace_id + span_id + flags):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id, flags


def new_id(bits: int) -> str:
    value = _ids.getrandbits(bits) or 1  # all zeros is invalid
    return f"{value:0{bits // 4}x}"


@trait
class Span:
    trace_id: str
    traceparent: str

    def end(self, status: int | None, error: str | None = None, /) -> None:
        raise NotImplementedError


@trait
class Tracer:
    # Positional parameters: the forwarder calls these once a request.
    def start(self, incoming: str | None, method: str, service: str, host: str, /) -> Span:
        """A span for one proxied request (``incoming``: the request's traceparent)."""
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError


class W3CSpan(Span):
    __slots__ = ("trace_id", "traceparent")

    def __init__(self, trace_id: str, traceparent: str) -> None:
        self.trace_id = trace_id
        self.traceparent = traceparent

    def end(self, status: int | None, error: str | None = None, /) -> None:
        return None


class W3CTracer(Tracer):
    """Propagation only: ids, no export."""

    def __init__(self) -> None:
        self._bits: Callable[[int], int] = _ids.getrandbits  # bound once, not looked up per call

    def start(self, incoming: str | None, method: str, service: str, host: str, /) -> Span:
        if incoming is None:  # a new trace: both ids from one draw (hot path; bytes.hex is
            # a third of format(n, "048x")'s cost)
            ids = self._bits(192).to_bytes(24, "big").hex()
            trace_id, span_id = ids[:32], ids[32:]
            if trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN:
                return W3CSpan(trace_id, f"00-{trace_id}-{span_id}-01")
        parent = parse_traceparent(incoming)
        trace_id, flags = (parent[0], parent[2]) if parent else (new_id(128), "01")
        return W3CSpan(trace_id, f"00-{trace_id}-{new_id(64)}-{flags}")

    def shutdown(self) -> None:
        return None


class OtelSpan(Span):
    __slots__ = ("_span", "trace_id", "traceparent")

    def __init__(self, span: Any, trace_id: str, traceparent: str) -> None:
        self._span = span
        self.trace_id = trace_id
        self.traceparent = traceparent

    def end(self, status: int | None, error: str | None = None, /) -> None:
        if status is not None:
            self._span.set_attribute("http.response.status_code", status)
        if error is not None:
            self._span.set_attribute("error.type", error)
        self._span.end()


class OtelTracer(Tracer):
    """Spans through the OpenTelemetry SDK, exported over OTLP/HTTP in batches."""

    def __init__(self, service_name: str) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create({"service.name": service_name})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("simmesh.proxy")
        self._in_context: Any = trace.set_span_in_context  # (a module is no native attribute)
        self._propagator = TraceContextTextMapPropagator()
        self._server_kind = trace.SpanKind.SERVER

    def start(self, incoming: str | None, method: str, service: str, host: str, /) -> Span:
        carrier = {"traceparent": incoming} if incoming else {}
        context = self._propagator.extract(carrier)
        attributes = {"http.request.method": method, "server.address": host} if host else {}
        span = self._tracer.start_span(
            f"{method} {service}", context=context, kind=self._server_kind, attributes=attributes
        )
        out: dict[str, str] = {}
        self._propagator.inject(out, context=self._in_context(span))
        trace_id = f"{span.get_span_context().trace_id:032x}"
        return OtelSpan(span, trace_id, out["traceparent"])

    def shutdown(self) -> None:
        self._provider.shutdown()


def make_tracer(service_name: str) -> Tracer:
    """OpenTelemetry when configured and importable, else W3C propagation only."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return W3CTracer()
    try:
        tracer = OtelTracer(service_name)
    except ImportError as exc:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is missing: %s", exc)
        return W3CTracer()
    log.info("exporting OpenTelemetry spans to %s", os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    return tracer
