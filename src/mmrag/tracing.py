"""OpenTelemetry traces, opt-in through the standard ``OTEL_*`` environment variables.

Library code marks its stages with :func:`span` and adds figures it learns later with
:func:`set_attributes` (or the ``set_attributes`` of the object :func:`span` yields);
:func:`start_span` is for work a ``with`` cannot enclose. A span that names no ``collection``
inherits its enclosing span's. Both cost one function call and a type check while no tracer provider is
installed (the default): nothing is exported, no span object is built, and attribute values are not
even converted. A provider is installed either by the process edge calling :func:`configure` (the
CLI does, for ``mmrag serve``, ``mmrag mcp`` and ``mmrag ingest``) or by the host application
(a test with an in-memory exporter, a service with its own OpenTelemetry setup).

Span names are ``mmrag.<stage>`` (``mmrag.retrieve``, ``mmrag.embed``, ``mmrag.fuse``,
``mmrag.llm``, ``mmrag.verify``, ``mmrag.ingest.<stage>``); attributes are ``mmrag.<key>``
(``mmrag.collection``, ``mmrag.hits``, ...).

Example:
    >>> from mmrag.tracing import span, set_attributes
    >>> with span("ingest.embed", collection="docs", items=32):
    ...     vectors = embed(batch)                  # doctest: +SKIP
    ...     set_attributes(dim=len(vectors[0]))     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Iterator, Mapping

from opentelemetry import trace

#: The instrumentation scope of every mmrag span.
SCOPE = "mmrag"


class _NoSpan:
    """What :func:`span` yields while tracing is off: accepts attributes and drops them."""

    def set_attributes(self, **attributes: Any) -> None:
        """Drop the attributes."""

    def set_attribute(self, key: str, value: Any) -> None:
        """Drop the attribute."""


_NO_SPAN = _NoSpan()
#: The collection of the innermost span that named one: spans below it (an embedding, a store
#: query) carry it too, though the code that opens them does not know it.
_COLLECTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("mmrag_trace_collection", default=None)


class _Span:
    """The live span :func:`span` yields, with mmrag's attribute naming."""

    def __init__(self, inner: trace.Span) -> None:
        self.inner = inner

    def set_attributes(self, **attributes: Any) -> None:
        """Set ``mmrag.<key>`` attributes (None values are skipped)."""
        self.inner.set_attributes(_attributes(attributes))

    def set_attribute(self, key: str, value: Any) -> None:
        """Set one ``mmrag.<key>`` attribute."""
        self.set_attributes(**{key: value})

    def end(self) -> None:
        """End the span (only for one from :func:`start_span`)."""
        self.inner.end()


class _NoStartedSpan(_NoSpan):
    def end(self) -> None:
        """Nothing to end."""


def enabled() -> bool:
    """Whether a tracer provider is installed (by :func:`configure` or by the host application)."""
    # Until someone installs a provider, the API hands out a proxy whose spans are no-ops.
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[_Span | _NoSpan]:
    """A span named ``mmrag.<name>``, the current span's child, for the body of a ``with``.

    Args:
        name: the stage, e.g. ``"retrieve"`` or ``"ingest.embed"``.
        **attributes: set as ``mmrag.<key>``; strings, numbers, bools or lists of them (other
            values are stringified; None is skipped).

    Yields:
        An object with ``set_attributes(**attributes)`` for figures known only at the end.

    An exception leaving the body is recorded on the span (status ERROR) and re-raised unchanged.
    """
    if not enabled():
        yield _NO_SPAN
        return
    collection = attributes.get("collection") or _COLLECTION.get()
    attributes["collection"] = collection
    token = _COLLECTION.set(collection)
    try:
        tracer = trace.get_tracer(SCOPE)
        with tracer.start_as_current_span(f"{SCOPE}.{name}", attributes=_attributes(attributes)) as inner:
            yield _Span(inner)
    finally:
        _COLLECTION.reset(token)


def start_span(name: str, **attributes: Any) -> _Span | _NoStartedSpan:
    """A span the caller ends with ``.end()``: for work a ``with`` cannot enclose (a generator).

    It is the current span's child but does not become current itself, so nothing opened
    meanwhile nests under it.
    """
    if not enabled():
        return _NoStartedSpan()
    attributes["collection"] = attributes.get("collection") or _COLLECTION.get()
    return _Span(trace.get_tracer(SCOPE).start_span(f"{SCOPE}.{name}", attributes=_attributes(attributes)))


def set_attributes(**attributes: Any) -> None:
    """Set ``mmrag.<key>`` attributes on the current span (nothing when tracing is off)."""
    if not enabled():
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(_attributes(attributes))


def _attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            # OpenTelemetry wants a list of one primitive type: anything mixed becomes strings.
            kinds = {type(v) for v in value}
            if len(kinds) > 1 or not kinds <= {str, bool, int, float}:
                value = [str(v) for v in value]
            else:
                value = list(value)
        elif not isinstance(value, (str, bool, int, float)):
            value = str(value)
        out[f"{SCOPE}.{key}"] = value
    return out


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces.

    They do when ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none``, or an OTLP
    endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
    unless ``OTEL_SDK_DISABLED=true``.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider if the ``OTEL_*`` variables ask for traces; called at the edge.

    ``OTEL_TRACES_EXPORTER`` is a comma-separated list of ``otlp`` (the default when only an
    endpoint is set; gRPC, configured by the exporter's own ``OTEL_EXPORTER_OTLP_*`` variables) and
    ``console``. ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the service (``mmrag``
    by default); ``OTEL_BSP_*`` tune the batch processor. Nothing is installed when a provider is
    already there (the host application's wins).

    Args:
        environ: the variables to read (``os.environ`` when None).

    Returns:
        True when this call installed a provider.

    Raises:
        ConfigError: an exporter name this build does not know, or one whose package is missing.
    """
    from mmrag.errors import ConfigError

    environ = os.environ if environ is None else environ
    if not wanted(environ) or enabled():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    names = [n.strip() for n in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
            if protocol != "grpc":
                raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this build exports OTLP over "
                                  "grpc only; unset it or set it to 'grpc'")
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise ConfigError("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-grpc: "
                                  f"pip install opentelemetry-exporter-otlp-proto-grpc ({exc})") from exc
            exporters.append(OTLPSpanExporter())
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER names {name!r}; known: otlp, console, none")
    # Resource.create lets OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES override this default.
    provider = TracerProvider(resource=Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or SCOPE}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True
