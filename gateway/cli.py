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
    p.add_argument("--workers", metavar="N", type=int, default=1,
                   help="serve from N processes on one port (default 1; SO_REUSEPORT); N > 1 needs Redis quota and registry stores; "
                   "worker i serves metrics on the metrics port + i")  # fmt: skip
    p.set_defaults(func=serve_gateway)


def serve_gateway(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, GatewayConfig, is_address, load_config
    from gateway.server import start_gateway
    from gateway.workers import run_workers, why_not_workers, worker_configs
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
    if args.workers < 1:
        raise CliError(f"--workers: must be at least 1, got {args.workers}")
    why_not = why_not_workers(config, args.workers)
    if why_not:
        raise CliError(why_not)
    configure_logging()

    async def run(config: GatewayConfig, worker: int | None) -> None:
        from hands.tracing import configure_tracing

        configure_tracing("brainhands-gateway", args.otel)  # off without --otel or OTEL_EXPORTER_OTLP_ENDPOINT
        running = await start_gateway(config, worker=worker)  # with its MCP front when the config has `mcp:`
        await run_until_signalled(running)

    def serve(config: GatewayConfig, worker: int | None = None) -> int:
        try:
            asyncio.run(run(config, worker))
        except OSError as exc:
            raise CliError(f"cannot start the gateway: {exc}") from None
        return 0

    if args.workers == 1:
        return serve(config)
    configs, held = worker_configs(config, args.workers)
    try:
        return run_workers(lambda i: run_command(lambda _: serve(configs[i], i), args, prog=f"gateway worker {i}"), args.workers)
    finally:
        if held is not None:
            held.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway ARGS`: the same flags as `brainhands serve gateway`."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Route hand calls to healthy hand services.")
    add_arguments(parser)
    return run_command(serve_gateway, parser.parse_args(argv), prog="python -m gateway")
