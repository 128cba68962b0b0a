"""A private PostgreSQL schema per test, so tests share the `test` database without seeing each other's rows."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import asyncpg


def with_search_path(database_url: str, schema: str) -> str:
    """The URL with ?search_path=SCHEMA (asyncpg passes it on as a server setting)."""
    parsed = urlparse(database_url)
    query = [(k, v) for k, v in parse_qsl(parsed.query) if k != "search_path"] + [("search_path", schema)]
    return urlunparse(parsed._replace(query=urlencode(query)))


async def create_schema(database_url: str) -> tuple[str, str]:
    """Create a uniquely named schema; return (schema, URL whose tables land in it)."""
    schema = f"bh_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return schema, with_search_path(database_url, schema)


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def drop_schema_sync(database_url: str, schema: str) -> None:
    """drop_schema from a synchronous finalizer: on its own thread, whatever loop the caller has."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, drop_schema(database_url, schema)).result(timeout=30)


@contextlib.asynccontextmanager
async def private_schema(database_url: str):
    """`async with private_schema(database_url) as url:` a URL on a fresh schema, dropped afterwards."""
    schema, url = await create_schema(database_url)
    try:
        yield url
    finally:
        await drop_schema(database_url, schema)


async def postgres_store(tmp_path, request):
    """A SessionStore-contract factory: a PostgresSessionStore on a private schema of $DATABASE_URL."""
    from brain.sessions import open_store

    database_url = request.getfixturevalue("database_url")
    schema, url = await create_schema(database_url)
    request.addfinalizer(lambda: drop_schema_sync(database_url, schema))
    return await open_store(url)
