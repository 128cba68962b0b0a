"""`brainhands serve mcp` as a process: one clear line for a mistake, and a served, registrable bridge."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, parse_config
from hands import HandClient
from tests.mcp.conftest import SERVER
from tests.procs import start_service


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brainhands", "serve", "mcp", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x"], "give either a command after -- (stdio) or --url"),
        (["--name", "Bad Name", "--", "true"], "--name: must match"),
        (["--name", "x", "--url", "http://127.0.0.1:9/mcp", "--connect-timeout", "1"],
         "cannot connect to the MCP server http://127.0.0.1:9/mcp within 1s"),
        (["--name", "x", "--env", "NO_SUCH_VAR_FOR_MCP_TEST", "--", "true"], "--env NO_SUCH_VAR_FOR_MCP_TEST: not set"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line_and_exit_2(args, message):
    done = _run(*args)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("brainhands: ") and message in last
    assert "Traceback" not in done.stderr


async def test_serve_mcp_serves_the_tools_as_hands():
    service = start_service(["serve", "mcp", "--name", "cli", "--port", "0", "--", sys.executable, SERVER])
    try:
        async with HandClient(service.address) as client:
            assert "cli_add" in {s.name for s in await client.describe(timeout=10)}
            assert (await client.execute("cli_add", {"a": 3, "b": 4}, timeout=10)).output == "7"
    finally:
        assert service.stop() == 0  # SIGTERM drains and stops the MCP server too


def test_gateway_config_takes_an_mcp_address():
    assert parse_config({"mcp": "127.0.0.1:8765"}).mcp == "127.0.0.1:8765"
    assert parse_config({}).mcp is None
    with pytest.raises(ConfigError, match="mcp: must be host:port"):
        parse_config({"mcp": "8765"})
