"""A hand service whose health a test can flip: `python -m tests.system.gateway_flip_backend`."""

from __future__ import annotations

import asyncio

import structlog
from grpc_health.v1 import health_pb2

from hands import hand, start
from hands.logs import configure_logging
from hands.serving import RunningServer, run_until_signalled
from tests.system.gateway_hands import whoami

_running: RunningServer | None = None


@hand(description="Set this service's grpc.health.v1 status to SERVING or NOT_SERVING.")
async def set_serving(serving: bool) -> str:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *_running.service_names]:
        await _running.health.set(name, status)
    return "SERVING" if serving else "NOT_SERVING"


async def main() -> None:
    global _running
    _running = await start([whoami, set_serving], port=0)
    structlog.get_logger("hands").info("serving hands", address=_running.address)
    await run_until_signalled(_running, grace=1.0)


if __name__ == "__main__":
    configure_logging()
    asyncio.run(main())
