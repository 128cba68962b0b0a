"""Fixtures shared by every part's tests: real servers on loopback port 0, Redis and PostgreSQL URLs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.services import service_url

#: Files that must not run beside each other on two workers (pyproject's `-n 2 --dist loadgroup`): the sandbox
#: tests count the processes of the sandbox's uids and the host's shared memory, which another file's sandbox
#: runs would change; the container tests build one image (a session fixture) and start stacks.
_TOGETHER = {
    "sandbox": ("tests/hands/test_sandbox", "tests/reliability/test_sandbox_hostile", "tests/reliability/test_identity",
                "tests/system/test_cli_run", "tests/system/test_workspaces", "tests/hands/test_workspaces",
                "tests/system/test_workspace_export"),
    "containers": ("tests/deploy/",),
}


def pytest_collection_modifyitems(config, items):
    """Each file runs on one worker (its module fixtures are made once); the files of _TOGETHER share one."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        group = next((name for name, starts in _TOGETHER.items() if path.startswith(starts)), path)
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
async def hand_service():
    """Start hand services in-process: `running = await hand_service([h1, h2], config=...)`."""
    from hands import start

    started = []

    async def _start(hands, **kwargs):
        running = await start(hands, **kwargs)
        started.append(running)
        return running

    yield _start
    for running in started:
        with contextlib.suppress(Exception):
            await running.server.stop(0)


@pytest.fixture
async def hand_client():
    """HandClients that are closed after the test: `client = hand_client(address)`."""
    from hands import HandClient

    clients = []

    def _make(target, **kwargs):
        client = HandClient(target, **kwargs)
        clients.append(client)
        return client

    yield _make
    for client in clients:
        await client.close()


def _redis_container():
    from testcontainers.redis import RedisContainer

    @contextlib.contextmanager
    def run():
        with RedisContainer() as c:
            yield f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0"

    return run()


def _postgres_container():
    from testcontainers.postgres import PostgresContainer

    @contextlib.contextmanager
    def run():
        with PostgresContainer("postgres:16-alpine", driver=None) as c:
            yield c.get_connection_url()

    return run()


@pytest.fixture(scope="session")
def redis_url():
    """A Redis URL: $REDIS_URL, a Redis at 127.0.0.1:6379, a testcontainers Redis, or skip (fail under CI=true)."""
    yield from service_url("Redis", "REDIS_URL", 6379, _redis_container)


@pytest.fixture(scope="session")
def database_url():
    """A PostgreSQL URL: $DATABASE_URL, postgres@127.0.0.1:5432/test, a testcontainers PostgreSQL, or skip (fail under CI=true)."""
    yield from service_url("PostgreSQL", "DATABASE_URL", 5432, _postgres_container)


@pytest.fixture
def messages_api():
    """A started ScriptedMessagesAPI (brainhands/scripted_api.py); pass its base_url to the SDK yourself."""
    from brainhands.scripted_api import ScriptedMessagesAPI

    with ScriptedMessagesAPI() as api:
        yield api


@pytest.fixture(autouse=True)
def _no_real_anthropic(monkeypatch):
    """No test may reach the real API: point the SDK at a closed port unless a test sets its own."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", os.environ.get("BRAINHANDS_TEST_ANTHROPIC_URL", "http://127.0.0.1:9"))


@pytest.fixture
async def brainhands_procs():
    """Start `python -m brainhands ARGS...` with piped output; every one still alive is killed at teardown."""
    import asyncio
    import sys

    started: list[asyncio.subprocess.Process] = []

    async def _start(*args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "brainhands", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "BRAINHANDS_LOG_FORMAT": "json"},
        )
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


@pytest.fixture
def work_root():
    """A directory a sandbox's per-run uids can pass through (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="brainhands-sandbox-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)
