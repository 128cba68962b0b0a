"""The memory hands as the local stack runs them: a real process behind a real gateway process."""

from __future__ import annotations

from brainhands.stack import start_local_stack
from hands import HandClient


async def test_the_local_stack_serves_memory_to_the_workers_of_a_session(tmp_path):
    db = tmp_path / "memory.db"
    stack = await start_local_stack(tmp_path, hands=("memory",), extra_env={"BRAINHANDS_MEMORY": str(db)})
    try:
        async with HandClient(stack.gateway) as client:
            names = {spec.name for spec in await client.describe(timeout=10)}
            assert {"memory_put", "memory_get", "memory_search"} <= names
            put = await client.execute("memory_put", {"key": "bug", "value": "the cache never expires"},
                                       session_id="s-1", timeout=10)  # fmt: skip
            assert not put.is_error, put.output
            got = await client.execute("memory_get", {"key": "bug"}, session_id="s-1", timeout=10)
            assert (got.is_error, got.output) == (False, "the cache never expires")
            found = await client.execute("memory_search", {"query": "cache"}, session_id="s-1", timeout=10)
            assert "the cache never expires" in found.output
            other = await client.execute("memory_get", {"key": "bug"}, session_id="s-2", timeout=10)
            assert other.is_error
    finally:
        stack.stop()
    assert db.exists()
