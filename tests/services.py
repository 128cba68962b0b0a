"""Where the tests find Redis and PostgreSQL (design §8): the env URL, else the default local address when a server
answers there, else a testcontainers container, else skip (fail under CI)."""

from __future__ import annotations

import os
import shutil
import socket
from urllib.parse import urlparse

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    if not shutil.which("docker") and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


def _missing(what: str, how: str) -> None:
    message = f"{what} is not available ({how})"
    if IN_CI:
        pytest.fail(f"{message}; under CI=true this fails the run: .ci/run must start it")
    pytest.skip(message)


#: Where a developer's own servers usually listen: Debian's and the official images' defaults.
DEFAULT_URLS = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
}


def _answers(url: str, default_port: int) -> bool:
    """The server at url speaks its protocol and lets us in (a port that merely accepts is not enough)."""
    if not _reachable(url, default_port):
        return False
    if url.startswith("redis://"):
        import redis

        try:
            return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
        except Exception:
            return False
    import asyncio

    import asyncpg

    async def check() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except Exception:
            return False
        await conn.close()
        return True

    # A session fixture may first be set up inside a running event loop (an async test's): check from a thread.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, check()).result()


def service_url(kind: str, env_var: str, default_port: int, container_factory):
    """Yield a URL for the service: env var, the default local address, a container, or skip/fail."""
    url = os.environ.get(env_var)
    if url:
        if not _reachable(url, default_port):
            _missing(kind, f"{env_var}={url} does not answer")
        yield url
        return
    default = DEFAULT_URLS.get(env_var)
    if default and _answers(default, default_port):
        yield default
        return
    if _docker_available():
        with container_factory() as container:
            yield container
        return
    _missing(kind, f"set {env_var}, run one at {DEFAULT_URLS[env_var]}, or run a Docker engine for testcontainers")
