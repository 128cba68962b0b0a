"""Every command's --help says what it does, and every option what it means, its unit and its default."""

from __future__ import annotations

import argparse
import re

from brainhands.cli import build_parser

UNIT_OR_DEFAULT = re.compile(r"default|second|byte|minute|\bms\b|count|number of|%\(default\)s", re.I)


def walk(parser: argparse.ArgumentParser, path: str = "brainhands"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def test_every_command_has_a_description_and_every_option_a_help_text():
    missing = []
    for path, parser in walk(build_parser()):
        if not (parser.description or "").strip():
            missing.append(f"{path}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {name}: no help")
            elif action.type in (int, float) and not UNIT_OR_DEFAULT.search(action.help):
                missing.append(f"{path} {name}: a number without its unit or default: {action.help!r}")
    assert missing == []
