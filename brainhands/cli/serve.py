"""`brainhands serve hand|mcp|gateway|brain`: run one service in the foreground until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os

from gateway import cli as gateway_cli
from hands import cli as hand_cli
from hands.cli import CliError

#: brain.service.DEFAULT_PORT, written here so that building the parser does not import the brain (and the
#: anthropic SDK, seconds on a busy machine) for every command; tests/brainhands/test_cli.py keeps the two equal.
BRAIN_PORT = 50061


def register(commands) -> None:
    serve = commands.add_parser("serve", help="run one service (hand, mcp, gateway, brain) in the foreground")
    serve_commands = serve.add_subparsers(dest="service", metavar="SERVICE")
    serve.set_defaults(func=lambda args: serve.print_help() or 2)
    hand_cli.add_parser(serve_commands)
    _register_mcp(serve_commands)
    gateway_cli.add_parser(serve_commands)
    _register_brain(serve_commands)


def _register_mcp(serve_commands) -> None:
    p = serve_commands.add_parser(
        "mcp",
        help="serve an MCP server's tools as hands (stdio: -- COMMAND ARGS..., or --url URL)",
        description="Connect to an MCP server and serve each of its tools as a hand named NAME_<tool>. "
        "Give the server as a command after -- (stdio) or with --url (streamable HTTP).",
    )
    p.add_argument("--name", required=True, help="prefix of the hand names, e.g. 'github' gives github_create_issue")
    p.add_argument("--url", help="streamable HTTP endpoint of the MCP server, e.g. http://127.0.0.1:8000/mcp")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="HTTP header for --url (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="environment variable for the stdio server; KEY alone copies ours (repeatable)")  # fmt: skip
    p.add_argument("--cwd", help="working directory of the stdio server")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the MCP server (default 30)")
    hand_cli.add_service_arguments(p)  # --port, --register, limits: the flags of `serve hand`
    p.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command that runs the MCP server on stdio")
    p.set_defaults(func=_serve_mcp)


def _pairs(values: list[str], sep: str, what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, found, rest = value.partition(sep)
        key = key.strip()
        if not key:
            raise CliError(f"{what}: expected KEY{sep}VALUE, got {value!r}")
        if not found:
            if what != "--env":
                raise CliError(f"{what}: expected KEY{sep}VALUE, got {value!r}")
            if key not in os.environ:
                raise CliError(f"--env {key}: not set in this environment; give --env {key}=VALUE")
            rest = os.environ[key]
        out[key] = rest.strip() if what == "--header" else rest
    return out


def _serve_mcp(args: argparse.Namespace) -> int:
    from hands import serve_async
    from hands.logs import configure_logging
    from hands.mcp import McpBridge, McpBridgeConfig, McpUnavailable

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    try:
        config = McpBridgeConfig(
            name=args.name,
            command=tuple(command),
            url=args.url,
            env=_pairs(args.env, "=", "--env"),
            cwd=args.cwd,
            headers=_pairs(args.header, ":", "--header"),
            connect_timeout=args.connect_timeout,
        )
    except ValueError as exc:  # McpConfigError names the flag
        raise CliError(str(exc)) from None
    service = hand_cli.service_config(args)  # a bad limit is one CliError naming its key
    port = hand_cli.DEFAULT_PORT if args.port is None else args.port
    credentials = hand_cli.registration_credentials(args)
    configure_logging()

    async def run() -> None:
        bridge = McpBridge(config)
        await bridge.start()
        try:
            await serve_async(
                bridge.hands(), host=args.host, port=port, config=service,
                register=args.register, advertise=args.advertise, register_credentials=credentials, metrics=args.metrics, otel=args.otel,
            )  # fmt: skip
        finally:
            await bridge.close()

    try:
        asyncio.run(run())
    except McpUnavailable as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(str(exc)) from None
    return 0


# -- serve brain --------------------------------------------------------------------------------


def _register_brain(serve_commands) -> None:
    p = serve_commands.add_parser("brain", help="run the BrainService: start, follow, wake and cancel sessions over gRPC")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=BRAIN_PORT, help=f"gRPC port (default {BRAIN_PORT}; 0 picks one)")
    p.add_argument("--gateway", metavar="ADDR", help="the gateway (or hand service) the brain calls (default $BRAINHANDS_GATEWAY)")
    p.add_argument("--sessions", metavar="URL", help="session store: a SQLite path or postgresql://... (default $BRAINHANDS_SESSIONS)")
    p.add_argument("--model", metavar="ID", help="Claude model id, or scripted:PATH (default $BRAINHANDS_MODEL)")
    p.add_argument("--config", metavar="FILE", help="tenants (API keys, caps on runs) and TLS, as YAML; "
                   "without it one local tenant, no key")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics (brainhands_brain_*) here")
    p.add_argument("--otel", metavar="ENDPOINT", help="export traces over OTLP/gRPC (default $OTEL_EXPORTER_OTLP_ENDPOINT)")
    p.add_argument("--approve", action="append", default=[], metavar="GLOB",
                   help="calls to hands matching GLOB wait for a person's approval in every session; repeatable")
    p.add_argument("--thinking", choices=("adaptive", "off"),
                   help="adaptive: the model decides when and how much to think; off: none (default off; a run may ask)")
    p.add_argument("--effort", choices=("low", "medium", "high"),
                   help="the model's effort in each answer (default: the model's own; a run may ask)")
    p.add_argument("--lease-ttl", type=float, metavar="SECONDS",
                   help="seconds a crashed brain still holds the sessions it started here (default 30)")
    p.add_argument("--adopt", action="store_true", help="finish running sessions no brain drives (their brain died or "
                   "stopped), each claimed through its lease in the session store, so two brains never drive one")
    p.add_argument("--adopt-interval", type=float, metavar="SECONDS", help="with --adopt: seconds between looks for "
                   "orphaned sessions (default 5)")
    p.add_argument("--adopt-max", type=int, metavar="N", help="with --adopt: orphaned sessions driven here at once "
                   "(default 4)")
    p.set_defaults(func=_serve_brain)


def _serve_brain(args: argparse.Namespace) -> int:
    from brain.auth import load_access
    from brain.service import BrainServiceConfig
    from hands.logs import configure_logging

    for flag, value in (("--adopt-interval", args.adopt_interval), ("--adopt-max", args.adopt_max)):
        if value is not None and not args.adopt:
            raise CliError(f"{flag}: only with --adopt")
    try:
        access = load_access(args.config) if args.config else None
        config = BrainServiceConfig.from_env(
            gateway=args.gateway or None, sessions=args.sessions or None, model=args.model or None,
            host=args.host, port=args.port, access=access,
            adopt=args.adopt or None, adopt_interval=args.adopt_interval, adopt_max=args.adopt_max,
        )  # fmt: skip
        limits: dict = {}
        if args.approve:
            limits["approve"] = (*config.limits.approve, *(g.strip() for g in args.approve if g.strip()))
        if args.thinking:
            limits["thinking"] = args.thinking
        if args.effort:
            limits["effort"] = args.effort
        if args.lease_ttl is not None:
            limits["lease_ttl"] = args.lease_ttl
        if limits:
            config = config.model_copy(update={"limits": config.limits.replace(**limits)})
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if config.access.open and config.host not in ("127.0.0.1", "localhost", "::1"):
        raise CliError(f"--host {config.host}: a brain service without tenants serves only this machine; "
                       "give it --config with tenants (API keys) to listen elsewhere")
    if not config.scripted and not config.anthropic_api_key:
        raise CliError(f"model {config.model} needs ANTHROPIC_API_KEY; set it, or pass --model scripted:PATH to run offline")
    if args.metrics:
        from hands.metrics import split_metrics_address

        try:
            split_metrics_address(args.metrics)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    configure_logging()
    try:
        asyncio.run(_serve(config, metrics=args.metrics, otel=args.otel, tenant=os.environ.get("BRAINHANDS_TENANT") or "default"))
    except ValueError as exc:  # a bad sessions URL or model script
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot start the brain service: {exc}") from None
    return 0


async def _serve(config, *, metrics: str | None = None, otel: str | None = None, tenant: str = "default") -> None:
    import structlog

    from brain.metrics import BrainMetrics
    from brain.service import start_brain_service
    from brain.sessions import default_sessions_path, open_store, redacted_url
    from hands.serving import run_until_signalled
    from hands.tracing import configure_tracing

    where = redacted_url(config.sessions or default_sessions_path())
    try:
        store = await open_store(config.sessions)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # sqlite3, asyncpg and socket errors alike: the store named is not usable
        raise CliError(f"cannot open the session store {where}: {exc}") from None
    configure_tracing("brainhands-brain", otel)  # off without --otel or OTEL_EXPORTER_OTLP_ENDPOINT
    counters = BrainMetrics(tenant=tenant) if metrics else None
    try:
        if counters is not None:
            counters.serve(metrics)
        try:
            running = await start_brain_service(config, store=store, metrics=counters)
        except RuntimeError as exc:  # grpcio reports a port it cannot bind as a RuntimeError
            if "Failed to bind" not in str(exc):
                raise
            raise CliError(f"cannot listen on {config.host}:{config.port}: is the port in use?") from None
        structlog.get_logger("brain.service").info(
            "serving brain", address=f"{config.host}:{running.port}", gateway=config.gateway, model=config.model, sessions=where,
            tenants=[t.name for t in config.access.tenants] or "one local tenant (no key)",
            tls=config.access.tls.cert is not None,
            adopt=f"every {config.adopt_interval:g}s, at most {config.adopt_max} at once" if config.adopt else False,
            **({"metrics": f"{metrics.rpartition(':')[0] or '127.0.0.1'}:{counters.port}"} if counters else {}),
        )
        await run_until_signalled(running)
    finally:
        if counters is not None:
            counters.close()
        await store.close()
