"""OpenTelemetry tracing, off unless the server configures it (``tracing.enabled``).

Every layer traces through this module, so the engine never imports the
server: the fronts open a server span from the caller's W3C ``traceparent``
(:func:`start_server`), the service one span per operation (:func:`start` /
:func:`finish`), the engine a few coarse ones (:func:`span`, and
:func:`record` for work timed after the fact, such as snapshots). Spans nest
through OpenTelemetry's context, which follows ``contextvars`` into the REST
worker threads.

Off (the default, and always in an embedded ``engramdb.open()``), each of
these is a read of a module global and returns a shared no-op: no span
object, no attribute dict, no import of OpenTelemetry. On, it needs the
``otel`` extra (``opentelemetry-sdk`` and the OTLP/HTTP exporter); the
tracer provider is this module's own, not OpenTelemetry's global one, so an
application that embeds EngramDB keeps its own tracing setup.

Span attributes hold operation names, route templates and error codes only:
never ids, keys, tenant or collection names, or user text.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

from engramdb.errors import EngramError

log = logging.getLogger("engramdb.tracing")

# The tracer while tracing is on, else None: the one thing the hot paths read.
_tracer: Any = None
_provider: Any = None


class _NoSpan:
    """The context manager every span call returns while tracing is off: enters to None, does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def enabled() -> bool:
    """Whether spans are being recorded in this process."""
    return _tracer is not None


def configure(
    *,
    service_name: str = "engramdb",
    sample_ratio: float = 1.0,
    endpoint: str | None = None,
    exporter: Any = None,
    batch: bool = True,
) -> None:
    """Start recording spans, exported to ``exporter`` or else OTLP/HTTP at ``endpoint``.

    New traces are sampled at ``sample_ratio``. The server span starts before the
    caller is authenticated, so a ``traceparent`` cannot raise the volume: one
    that says its caller sampled it is still sampled at ``sample_ratio``, by a
    random draw (the trace id is the caller's choice), and one that says not is
    never recorded. ``batch=False`` exports each span as it ends (tests).
    Raises ImportError when the ``otel`` extra is missing.
    """
    global _tracer, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    from engramdb._version import __version__

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    shutdown()
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": __version__}),
        sampler=ParentBased(
            TraceIdRatioBased(sample_ratio),
            remote_parent_sampled=ALWAYS_ON if sample_ratio >= 1.0 else _random_ratio(sample_ratio),
        ),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("engramdb", __version__)


def shutdown() -> None:
    """Stop recording; spans not exported yet are flushed first (bounded by the exporter's timeout)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        try:
            provider.shutdown()
        except Exception:  # an unreachable collector must not fail a server's shutdown
            log.warning("flushing the last spans failed", exc_info=True)


def _random_ratio(ratio: float) -> Any:
    """A sampler keeping ``ratio`` of the spans it is asked about, drawn at random (not from the trace id)."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class RandomRatio(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, *args: Any, **kw: Any) -> Any:
            ts = kw.get("trace_state")
            if random.random() < ratio:
                return SamplingResult(Decision.RECORD_AND_SAMPLE, kw.get("attributes"), ts)
            return SamplingResult(Decision.DROP, None, ts)

        def get_description(self) -> str:
            return f"RandomRatio{{{ratio}}}"

    return RandomRatio()


def span(name: str) -> AbstractContextManager[Any]:
    """A child span of the current one around a block (the no-op while tracing is off)."""
    tracer = _tracer
    if tracer is None:
        return _NO_SPAN
    return _span(tracer, name)


@contextlib.contextmanager
def _span(tracer: Any, name: str) -> Iterator[Any]:
    from opentelemetry.trace import Status, StatusCode

    # OpenTelemetry's defaults would export the exception's message and stack: they hold caller input
    # (ids, filter field names, text). A span gets the error code only.
    with tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False) as sp:
        try:
            yield sp
        except EngramError as e:
            sp.set_attribute("engramdb.error_code", e.code)
            if e.http_status >= 500:  # a client's mistake does not mark the span failed
                sp.set_status(Status(StatusCode.ERROR, e.code))
            raise
        except BaseException as e:
            sp.set_status(Status(StatusCode.ERROR, type(e).__name__))
            raise


def start(name: str, detail: str | None = None) -> Any:
    """Open a span named ``name`` (or ``"name detail"``) and make it current; None while off.

    For code that cannot wrap its body in a ``with``: pass the result to :func:`finish`.
    """
    tracer = _tracer
    if tracer is None:
        return None
    from opentelemetry import context, trace

    sp = tracer.start_span(name if detail is None else f"{name} {detail}")
    return sp, context.attach(trace.set_span_in_context(sp))


def finish(
    handle: Any,
    error_code: str | None = None,
    *,
    failed: bool = False,
    name: str | None = None,
    attributes: Mapping[str, str | int] | None = None,
) -> None:
    """End a span of :func:`start` or :func:`start_server` (None: nothing to do).

    ``error_code`` becomes ``engramdb.error_code``; ``failed`` marks the span
    failed; ``name`` renames it (a route known only after routing).
    """
    if handle is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    sp, token = handle
    if name is not None:
        sp.update_name(name)
    if attributes:
        sp.set_attributes(attributes)
    if error_code is not None:
        sp.set_attribute("engramdb.error_code", error_code)
    if failed:
        sp.set_status(Status(StatusCode.ERROR, error_code))
    try:
        context.detach(token)
    finally:
        sp.end()


def record(name: str, started: float, **attributes: str | int | float | bool) -> None:
    """A finished span from ``started`` (a ``time.perf_counter()`` value) to now, as a child of the current span.

    For background work whose duration is measured anyway (snapshots, replays):
    no ``with`` block to thread through its several exits.
    """
    tracer = _tracer
    if tracer is None:
        return
    now_ns = time.time_ns()
    begin_ns = now_ns - int((time.perf_counter() - started) * 1e9)
    sp = tracer.start_span(name, start_time=begin_ns, attributes=attributes or None)
    sp.end(end_time=now_ns)


# W3C trace context as it arrives: HTTP headers (ASGI's (bytes, bytes) pairs) or gRPC metadata (str pairs).
Carrier = Iterable[tuple[str | bytes, str | bytes]]
_TRACE_HEADERS = {
    "traceparent": "traceparent",
    "tracestate": "tracestate",
    b"traceparent": "traceparent",
    b"tracestate": "tracestate",
}


def start_server(name: str, carrier: Carrier | None, **attributes: str | int) -> Any:
    """Open a SERVER span continuing the caller's trace (W3C ``traceparent``/``tracestate`` in ``carrier``).

    Header names must be lower case (ASGI and gRPC give them so). Without a
    valid ``traceparent`` the span starts a new trace. Returns None while
    tracing is off (``carrier`` is not read); pass the result to :func:`finish`.
    """
    tracer = _tracer
    if tracer is None:
        return None
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    headers: dict[str, str] = {}
    for k, v in carrier or ():
        key = _TRACE_HEADERS.get(k)
        if key is not None:
            headers[key] = v.decode("latin-1") if isinstance(v, bytes) else v
    parent = TraceContextTextMapPropagator().extract(headers) if headers else None
    sp = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes or None)
    return sp, context.attach(trace.set_span_in_context(sp))
