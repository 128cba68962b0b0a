"""The README's test command finds a developer's own Redis and PostgreSQL on their default addresses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("port,test", [
    (6379, "tests/gateway/test_quota_contract.py::test_counters_left_by_a_gateway_with_fixed_windows_do_not_break_admission"),
    (5432, "tests/brain/test_session_store_postgres.py::test_a_database_that_does_not_exist_is_named"),
])
def test_tests_use_the_default_local_server_when_no_url_is_set(port, test):
    """With no URL in the environment (a developer's shell), the server tests run instead of skipping."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        pytest.skip(f"no server listens on 127.0.0.1:{port} on this machine")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "CI")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rs", test],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert " skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]
