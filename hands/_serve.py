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
) -> None:
    running = await start(hands, host=host, port=port, config=config)
    log.info(
        "serving hands",
        address=f"{host}:{running.port}",
        hands=[h.name for h in hands],
        max_concurrency=config.max_concurrency,
    )
    if register:
        from hands.registration import keep_registered  # the gateway owns the registry contract

        await keep_registered(running, register, advertise or f"{host}:{running.port}")
    await run_until_signalled(running, grace=grace)


def serve(hands: Sequence[Hand], port: int = 50071, host: str = "127.0.0.1", **kwargs) -> None:
    """Serve the hands on host:port until SIGTERM or Ctrl-C, then drain and return.

    The entry point of a script (`if __name__ == "__main__": serve([...])`): like the command line, it
    sets logging up unless the application already has. Code that manages its own loop uses serve_async.
    """
    if not structlog.is_configured():
        configure_logging()
    asyncio.run(serve_async(list(hands), host=host, port=port, **kwargs))
