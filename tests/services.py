"""Where the tests find Redis and PostgreSQL: env URL, else a testcontainers container, else skip (fail under CI)."""

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


def service_url(kind: str, env_var: str, default_port: int, container_factory):
    """Yield a URL for the service: env var, container, or skip/fail."""
    url = os.environ.get(env_var)
    if url:
        if not _reachable(url, default_port):
            _missing(kind, f"{env_var}={url} does not answer")
        yield url
        return
    if _docker_available():
        with container_factory() as container:
            yield container
        return
    _missing(kind, f"set {env_var}, or run a Docker engine for testcontainers")
