"""The brainhands command: one entry point, a module per command group."""

from __future__ import annotations

import argparse
import sys

from brainhands import __version__
from brainhands.cli import console, local, run, serve, sessions
from brainhands.cli import hands as hands_commands
from hands.cli import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainhands",
        description="Run LLM agents as an orchestrator brain and gRPC hands behind a gateway.",
    )
    parser.add_argument("--version", action="version", version=f"brainhands {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve.register(commands)
    hands_commands.register(commands)
    run.register(commands)
    sessions.register(commands)
    local.register(commands)
    console.register(commands)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """A command registered with only a one-line help gets it as its --help description too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not sub.description and helps.get(name):
                    text = helps[name]
                    sub.description = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
                _describe(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.func, args)
