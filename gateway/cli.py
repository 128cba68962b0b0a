"""Commands for the gateway: `brainhands serve gateway --config FILE`."""

from __future__ import annotations

import argparse
import asyncio

from hands.cli import CliError, run_command


def add_parser(serve_commands) -> argparse.ArgumentParser:
    p = serve_commands.add_parser("gateway", help="route hand calls to healthy hand services (HandService in front)")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="gateway YAML config (see examples/gateway.yaml); default: no static routes")
    p.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address (port 0 picks one)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="override the config's Prometheus address ('off' to disable)")
    p.add_argument("--otel", metavar="ENDPOINT", help="export traces over OTLP/gRPC (default $OTEL_EXPORTER_OTLP_ENDPOINT)")
    p.set_defaults(func=serve_gateway)


def serve_gateway(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, GatewayConfig, is_address, load_config
    from gateway.server import start_gateway
    from hands.logs import configure_logging
    from hands.serving import run_until_signalled

    try:
        config = load_config(args.config) if args.config else GatewayConfig()
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if args.listen:
        if not is_address(args.listen):
            raise CliError(f"--listen: must be host:port, got {args.listen!r}")
        config = config.replace(listen=args.listen)
    if args.metrics:
        if args.metrics != "off" and not is_address(args.metrics):
            raise CliError(f"--metrics: must be host:port or 'off', got {args.metrics!r}")
        config = config.replace(metrics=None if args.metrics == "off" else args.metrics)
    configure_logging()

    async def run() -> None:
        from hands.tracing import configure_tracing

        configure_tracing("brainhands-gateway", args.otel)  # off without --otel or OTEL_EXPORTER_OTLP_ENDPOINT
        running = await start_gateway(config)  # with its MCP front when the config has `mcp:`
        await run_until_signalled(running)

    try:
        asyncio.run(run())
    except OSError as exc:
        raise CliError(f"cannot start the gateway: {exc}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway ARGS`: the same flags as `brainhands serve gateway`."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Route hand calls to healthy hand services.")
    add_arguments(parser)
    return run_command(serve_gateway, parser.parse_args(argv), prog="python -m gateway")
