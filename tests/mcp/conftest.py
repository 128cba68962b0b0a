"""Fixtures for the MCP tests: the test MCP server over streamable HTTP as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SERVER = str(Path(__file__).with_name("mcp_test_server.py"))


def stdio_command() -> list[str]:
    """The command that runs the test MCP server on stdio."""
    return [sys.executable, SERVER]


@pytest.fixture
def mcp_ledger(tmp_path) -> Path:
    """A file the test MCP server appends `tool pid` to for every call it starts."""
    path = tmp_path / "mcp-ledger.txt"
    path.touch()
    return path


@pytest.fixture
def http_mcp_server(mcp_ledger):
    """The test MCP server over streamable HTTP, as a process; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--http"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**__import__("os").environ, "MCP_TEST_LEDGER": str(mcp_ledger)},
        text=True,
    )
    try:
        line = proc.stdout.readline()  # the server prints its URL once it is listening; EOF if it died
        if not line.startswith("listening "):
            raise RuntimeError(f"the HTTP MCP test server did not start (exit {proc.poll()})")
        yield line.split()[1]
    finally:
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
