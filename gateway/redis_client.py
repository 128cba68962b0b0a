"""The gateway's Redis connections (quota and registry stores): bounded pools, short timeouts, no blind retries."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, *, timeout: float = 1.0, max_connections: int = 32) -> aioredis.Redis:
    """A client whose calls beyond max_connections wait for a connection (up to timeout) instead of failing.

    No automatic retries: a script whose reply was lost may have been applied, and running it again could
    count a call twice. A failure goes to the caller's policy (fail open or closed, keep the last view).
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=10,
    )
    return aioredis.Redis(connection_pool=pool)
