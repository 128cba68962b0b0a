"""`brainhands console`: the web console over a brain service (and a gateway), on a local address."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from hands.cli import CliError

DEFAULT_LISTEN = "127.0.0.1:8080"


def register(commands) -> None:
    console = commands.add_parser(
        "console",
        help="serve the web console: sessions live, approvals, the hand fleet and quotas",
        description=(
            "Serves the web console over a BrainService (--brain, or $BRAINHANDS_BRAIN) and a gateway (--gateway, "
            "or $BRAINHANDS_GATEWAY). Sign in with a tenant key; the console presents it to both. With --sessions "
            "instead of --brain it starts a brain service of its own over that session log, to look at past "
            "sessions (for example the demo's)."
        ),
    )
    console.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                         help=f"where the console listens (default {DEFAULT_LISTEN}; port 0 picks a free one)")
    console.add_argument("--brain", metavar="ADDR", help="the brain service (default $BRAINHANDS_BRAIN)")
    console.add_argument("--gateway", metavar="ADDR", help="the gateway, for the fleet and quotas (default $BRAINHANDS_GATEWAY)")
    console.add_argument("--sessions", metavar="URL",
                         help="no brain service to ask: read this session log (a SQLite path or postgresql://...) "
                              "through a brain service started here")
    console.set_defaults(func=_console)


def _console(args: argparse.Namespace) -> int:
    from brainhands.console.serve import parse_listen
    from hands.logs import configure_logging

    configure_logging()
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    brain = args.brain or os.environ.get("BRAINHANDS_BRAIN")
    if args.sessions and args.brain:
        raise CliError("give --brain or --sessions, not both")
    if not brain and not args.sessions:
        raise CliError("no brain service: pass --brain ADDR (or set BRAINHANDS_BRAIN), or --sessions URL to read a "
                       "session log; `brainhands up` starts a brain service and this console together")
    gateway = args.gateway or os.environ.get("BRAINHANDS_GATEWAY")
    return asyncio.run(_serve(host, port, None if args.sessions else brain, gateway, args.sessions))


async def _serve(host: str, port: int, brain: str | None, gateway: str | None, sessions: str | None) -> int:
    from brainhands.console import ConsoleConfig, start_console

    embedded = None
    if brain is None:
        embedded = await start_reader_brain(sessions, gateway)
        brain = embedded.address
    try:
        try:
            server = await start_console(ConsoleConfig(brain=brain, gateway=gateway), host, port)
        except OSError as exc:
            raise CliError(f"the console cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        import structlog

        structlog.get_logger("brainhands.console").info("serving console", address=server.address, url=server.url,
                                                        brain=brain, gateway=gateway or "")
        print(f"console {server.url}   (brain {brain}{f' · gateway {gateway}' if gateway else ''}); Ctrl-C stops it",
              file=sys.stderr)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()
    finally:
        if embedded is not None:
            await embedded.drain(1.0)
    return 0


async def start_reader_brain(sessions: str, gateway: str | None):
    """A brain service on a free loopback port over a session log, for looking at it (it runs nothing new)."""
    from brain.service import BrainServiceConfig, start_brain_service
    from brain.sessions import StoreUnavailable

    config = BrainServiceConfig(gateway=gateway or "127.0.0.1:1", sessions=sessions, port=0)
    try:
        return await start_brain_service(config)
    except (StoreUnavailable, OSError, ValueError) as exc:
        raise CliError(f"cannot read the session log {sessions}: {exc}") from None
