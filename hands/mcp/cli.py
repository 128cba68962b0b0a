"""`brainhands serve mcp`: serve the tools of an MCP server (a command over stdio, or a URL) as hands."""

from __future__ import annotations

import argparse
import asyncio
import os

from brainhands.cli import CliError


def register(commands, serve_commands) -> None:
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
    p.add_argument("--port", type=int, default=50071)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--register", metavar="GATEWAY", help="register with this gateway and keep the lease alive")
    p.add_argument("--advertise", metavar="ADDR", help="address the gateway should dial (default host:port)")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the MCP server")
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--timeout", type=float, default=300.0, help="longest a call may run, in seconds")
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
    from brainhands.logs import configure_logging
    from hands import HandServiceConfig, serve_async
    from hands.mcp import McpBridge, McpBridgeConfig, McpConfigError, McpUnavailable

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
    except McpConfigError as exc:
        raise CliError(str(exc)) from None
    service = HandServiceConfig(max_concurrency=args.max_concurrency, default_timeout=args.timeout)
    configure_logging()

    async def run() -> None:
        bridge = McpBridge(config)
        await bridge.start()
        try:
            await serve_async(
                bridge.hands(), host=args.host, port=args.port, config=service,
                register=args.register, advertise=args.advertise,
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
