"""The brainhands command: one entry point; each part (hands, gateway, brain) adds its own commands."""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that add commands: each has register(commands, serve_commands).
COMMAND_MODULES = ("hands.cli", "hands.mcp.cli", "gateway.cli", "brain.cli", "brain.service_cli", "brainhands.local")


class CliError(Exception):
    """An error a person can fix: printed as one line, exit status 2 (or .exit_code)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainhands",
        description="Run LLM agents as an orchestrator brain and gRPC hands behind a gateway.",
    )
    from brainhands import __version__

    parser.add_argument("--version", action="version", version=f"brainhands {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run one service (hand, gateway, brain) in the foreground")
    serve_commands = serve.add_subparsers(dest="service", metavar="SERVICE")
    serve.set_defaults(func=lambda args: serve.print_help() or 2)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if name.startswith(exc.name or "?"):  # the part is not built yet
                continue
            raise
        module.register(commands, serve_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        result = args.func(args)
    except CliError as exc:
        print(f"brainhands: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("brainhands: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
