"""serve(): run hands as a service from a script or the command line, until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Sequence

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
    register_credentials=None,
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

        await keep_registered(
            running, register, advertise or f"{host}:{running.port}", credentials=register_credentials
        )
    await run_until_signalled(running, grace=grace)


def serve(hands: Sequence[Hand], port: int = 50071, host: str = "127.0.0.1", **kwargs) -> None:
    """Serve the hands on host:port until SIGTERM or Ctrl-C, then drain and return."""
    configure_logging()
    asyncio.run(serve_async(list(hands), host=host, port=port, **kwargs))


def load_hands(spec: str) -> list[Hand]:
    """Resolve MODULE[:ATTR] to hands.

    ATTR may name a Hand, a list of hands, or a factory that returns either. Without
    ATTR the module's HANDS (list or factory) is used, else every Hand at module level.
    """
    module_name, _, attr = spec.partition(":")
    # Like `python -m` and uvicorn: a module next to where the command runs is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"cannot import hand module {module_name!r}: {exc}") from None
    if attr:
        if not hasattr(module, attr):
            raise SystemExit(f"module {module_name!r} has no attribute {attr!r}")
        found = getattr(module, attr)
    elif hasattr(module, "HANDS"):
        found = module.HANDS
    else:
        found = [v for v in vars(module).values() if isinstance(v, Hand)]
        if not found:
            raise SystemExit(f"module {module_name!r} defines no hands (decorate async functions with @hand)")
    if callable(found) and not isinstance(found, Hand):
        found = found()
    if isinstance(found, Hand):
        found = [found]
    found = list(found)
    bad = [h for h in found if not isinstance(h, Hand)]
    if bad:
        raise SystemExit(f"{spec}: {bad[0]!r} is not a hand (decorate it with @hand)")
    return found


def service_main(
    factory: Callable[[], Sequence[Hand]],
    *,
    prog: str,
    description: str,
    default_port: int,
    argv: list[str] | None = None,
) -> int:
    """`python -m hands.builtin.X`: --port/--host/--register, hands built by factory from the environment.

    A ValueError from the factory (a bad environment value) is one line and exit status 2.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--port", type=int, default=default_port, help="port to listen on (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--register", metavar="GATEWAY", help="register with this gateway and keep the lease alive")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        found = list(factory())
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    serve(found, port=args.port, host=args.host, register=args.register)
    return 0
