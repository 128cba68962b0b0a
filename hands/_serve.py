"""serve(): run hands as a service from a script or the command line, until SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from hands._hand import Hand
from hands._server import HandServiceConfig, start
from hands.logs import configure_logging
from hands.serving import run_until_signalled

log = structlog.get_logger("hands")


async def serve_async(
    hands: Sequence[Hand],
    *,
    host: str = "127.0.0.1",
    port: int = 50071,
    config: HandServiceConfig = HandServiceConfig(),
    register: str | None = None,
    advertise: str | None = None,
    grace: float = 30.0,
    metrics: str | None = None,
    otel: str | None = None,
) -> None:
    """metrics: HOST:PORT to serve brainhands_hand_* on; otel: an OTLP endpoint (else OTEL_EXPORTER_OTLP_ENDPOINT)."""
    from hands import tracing

    tracing.configure_tracing(f"brainhands-{hands[0].name.split('_')[0]}" if hands else "brainhands-hand", otel)
    counters = None
    if metrics:  # prometheus_client is imported only by a service that serves metrics
        from hands.metrics import HandMetrics

        counters = HandMetrics()
    metrics_port = counters.serve(metrics) if counters else None
    running = await start(hands, host=host, port=port, config=config, metrics=counters)
    if counters is not None:
        running.on_drain.append(_async(counters.close))
    log.info(
        "serving hands",
        address=f"{host}:{running.port}",
        hands=[h.name for h in hands],
        max_concurrency=config.max_concurrency,
        **({"metrics": f"{metrics.rpartition(':')[0] or '127.0.0.1'}:{metrics_port}"} if counters else {}),
        **({"tracing": "on"} if tracing.enabled() else {}),
    )
    if register:
        from hands.registration import keep_registered  # the gateway owns the registry contract

        await keep_registered(running, register, advertise or f"{host}:{running.port}")
    await run_until_signalled(running, grace=grace)


def _async(close):
    async def run() -> None:
        close()

    return run


def serve(hands: Sequence[Hand], port: int = 50071, host: str = "127.0.0.1", **kwargs) -> None:
    """Serve the hands on host:port until SIGTERM or Ctrl-C, then drain and return.

    The entry point of a script (`if __name__ == "__main__": serve([...])`): like the command line, it
    sets logging up unless the application already has. Code that manages its own loop uses serve_async.
    """
    if not structlog.is_configured():
        configure_logging()
    asyncio.run(serve_async(list(hands), host=host, port=port, **kwargs))
