"""A SQLite session store with garbage in its middle pages: every command that opens it says so in one line, exit 2."""

from __future__ import annotations

import asyncio
import os

import pytest

from brain.sessions.sqlite import SqliteSessionStore

pytestmark = pytest.mark.system


async def _fill(path: str) -> str:
    store = await SqliteSessionStore.open(path)
    try:
        first = ""
        for i in range(20):
            session_id = await store.create_session(f"task {i} " + "x" * 500, {"model": "m"})
            first = first or session_id
            await store.append_many(session_id, 1, [("turn", {"text": "y" * 6000}) for _ in range(5)])
    finally:
        await store.close()
    return first


def _damage(path: str) -> int:
    """Overwrite pages in the middle of the file (never the header page) with garbage; the number of pages hit."""
    size = os.path.getsize(path)
    page = 4096
    pages = size // page
    hit = 0
    with open(path, "r+b") as f:
        for n in range(pages // 3, 2 * pages // 3, 2):
            f.seek(n * page)
            f.write(os.urandom(page))
            hit += 1
    return hit


@pytest.mark.parametrize("command", ["list", "show", "wake"])
async def test_a_corrupt_session_store_is_one_line_naming_the_file_and_what_to_do(tmp_path, brainhands_procs,
                                                                                   command, record, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-unused")  # so wake gets as far as the store
    path = str(tmp_path / "sessions.db")
    session_id = await _fill(path)
    for suffix in ("-wal", "-shm"):  # checkpointed at close; nothing of the log lives beside the file
        assert not os.path.exists(path + suffix) or os.path.getsize(path + suffix) == 0
    pages = await asyncio.to_thread(_damage, path)
    args = {"list": ["sessions", "list"], "show": ["sessions", "show", session_id],
            "wake": ["sessions", "wake", session_id]}[command]
    proc = await brainhands_procs(*args, "--sessions", path)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    record("corrupt session store", f"brainhands sessions {command}", f"exit {proc.returncode}",
           pages_damaged=pages, stderr_lines=len(lines), said=lines[-1][:160] if lines else "")
    assert proc.returncode == 2, err.decode()[-2000:]
    assert len(lines) == 1 and "Traceback" not in err.decode(), err.decode()[-2000:]
    assert os.path.abspath(path) in lines[0] and "corrupt" in lines[0]
    assert 'PRAGMA integrity_check' in lines[0] and "move it aside" in lines[0]
