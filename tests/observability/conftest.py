"""Fixtures for tracing and metrics tests: tracing on with the SDK's in-memory exporter, off again afterwards."""

from __future__ import annotations

import pytest

from hands import tracing


@pytest.fixture
def spans():
    """Tracing on for this test, every finished span kept in memory: `spans()` -> the spans so far."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.configure_tracing("brainhands-test", exporter=exporter)
    yield exporter.get_finished_spans
    tracing.shutdown_tracing()
