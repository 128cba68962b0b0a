"""The brainhands command as a whole: what building its parser costs, and the defaults it shares with the parts."""

from __future__ import annotations

import subprocess
import sys


def test_building_the_parser_imports_neither_the_brain_nor_the_model_sdk():
    """`brainhands serve hand ...` starts every hand process: it must not pay for the anthropic SDK's import."""
    code = ("import sys; from brainhands.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('anthropic', 'brain', 'mcp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_serve_brain_defaults_to_the_brain_services_port():
    from brain.service import DEFAULT_PORT
    from brainhands.cli import build_parser

    assert build_parser().parse_args(["serve", "brain"]).port == DEFAULT_PORT
