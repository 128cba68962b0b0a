"""`brainhands serve brain`: run the BrainService until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os

from brainhands.cli import CliError


def register(commands, serve_commands) -> None:
    from brain.service import DEFAULT_PORT

    p = serve_commands.add_parser("brain", help="run the BrainService: start, follow, wake and cancel sessions over gRPC")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"gRPC port (default {DEFAULT_PORT}; 0 picks one)")
    p.add_argument("--gateway", metavar="ADDR", help="the gateway (or hand service) the brain calls (default $BRAINHANDS_GATEWAY)")
    p.add_argument("--sessions", metavar="URL", help="session store: a SQLite path or postgresql://... (default $BRAINHANDS_SESSIONS)")
    p.add_argument("--model", metavar="ID", help="Claude model id, or scripted:PATH (default $BRAINHANDS_MODEL)")
    p.set_defaults(func=_serve_brain)


def _serve_brain(args: argparse.Namespace) -> int:
    from brain.model import DEFAULT_MODEL
    from brain.service import BrainServiceConfig
    from brainhands.logs import configure_logging

    env = os.environ
    try:
        config = BrainServiceConfig(
            gateway=args.gateway or env.get("BRAINHANDS_GATEWAY") or "",
            sessions=args.sessions or env.get("BRAINHANDS_SESSIONS") or None,
            model=args.model or env.get("BRAINHANDS_MODEL") or DEFAULT_MODEL,
            host=args.host,
            port=args.port,
            api_key=env.get("BRAINHANDS_API_KEY") or None,
            anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
            anthropic_base_url=env.get("ANTHROPIC_BASE_URL") or None,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not config.scripted and not config.anthropic_api_key:
        raise CliError(f"model {config.model} needs ANTHROPIC_API_KEY; set it, or pass --model scripted:PATH to run offline")
    configure_logging()
    try:
        asyncio.run(_serve(config))
    except ValueError as exc:  # a bad sessions URL or model script
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot start the brain service: {exc}") from None
    return 0


async def _serve(config) -> None:
    import structlog

    from brain.service import start_brain_service
    from brain.sessions import default_sessions_path, open_store
    from brainhands.serving import run_until_signalled

    where = _redacted(config.sessions or default_sessions_path())
    try:
        store = await open_store(config.sessions)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # sqlite3, asyncpg and socket errors alike: the store named is not usable
        raise CliError(f"cannot open the session store {where}: {exc}") from None
    try:
        try:
            running = await start_brain_service(config, store=store)
        except RuntimeError as exc:  # grpcio reports a port it cannot bind as a RuntimeError
            if "Failed to bind" not in str(exc):
                raise
            raise CliError(f"cannot listen on {config.host}:{config.port}: is the port in use?") from None
        structlog.get_logger("brain.service").info(
            "serving brain", address=f"{config.host}:{running.port}", gateway=config.gateway, model=config.model, sessions=where
        )
        await run_until_signalled(running)
    finally:
        await store.close()


def _redacted(url: str) -> str:
    """The URL without its password, fit for a log line or an error message."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
