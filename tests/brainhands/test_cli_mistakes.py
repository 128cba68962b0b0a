"""Mistakes a new user makes get one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def brainhands(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BRAINHANDS_"))}
    base["XDG_STATE_HOME"] = str(cwd / "state")
    return subprocess.run([sys.executable, "-m", "brainhands", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**base, **(env or {})})


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    return line


def test_a_mistyped_sessions_path_is_one_line_and_creates_nothing(tmp_path):
    typo = tmp_path / "sesions" / "sessions.db"
    for action in (["list"], ["show", "abc123"], ["cancel", "abc123"]):
        line = one_line(brainhands("sessions", *action, "--sessions", str(typo), cwd=tmp_path))
        assert line == (f"brainhands: no session store at {typo} (given by --sessions): nothing has run with it;"
                        " check the path, or run `brainhands run` or `brainhands demo` first")
    assert not typo.parent.exists()


def test_before_anything_ran_sessions_list_says_there_are_none(tmp_path):
    proc = brainhands("sessions", "list", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr.strip() == "(no sessions)"
    assert not (tmp_path / "state").exists()


def test_a_bad_postgresql_url_is_blamed_on_the_flag_that_gave_it(tmp_path):
    line = one_line(brainhands("sessions", "list", "--sessions", "postgresql://postgres@127.0.0.1:notaport/x",
                               cwd=tmp_path, env={"BRAINHANDS_SESSIONS": str(tmp_path / "fine.db")}))
    assert "not valid" in line and "(given by --sessions)" in line
    assert "BRAINHANDS_SESSIONS" not in line
    line = one_line(brainhands("sessions", "list", cwd=tmp_path,
                               env={"BRAINHANDS_SESSIONS": "postgresql://postgres@127.0.0.1:notaport/x"}))
    assert "(given by $BRAINHANDS_SESSIONS)" in line


def test_an_ambiguous_short_id_names_the_candidates(tmp_path):
    import asyncio

    from brain import open_store

    db = tmp_path / "s.db"

    async def make() -> list[str]:
        store = await open_store(str(db))
        try:
            return [await store.create_session(f"task {i}", {}) for i in range(40)]
        finally:
            await store.close()

    ids = asyncio.run(make())
    shared = next(i[:1] for i in ids if sum(j.startswith(i[:1]) for j in ids) > 1)
    line = one_line(brainhands("sessions", "show", shared, "--sessions", str(db), cwd=tmp_path))
    assert line.startswith(f"brainhands: session id {shared} is ambiguous: it starts ")
    assert all(c in line for c in sorted(i for i in ids if i.startswith(shared))[:3])
    full = ids[0]
    short = next(full[:n] for n in range(1, 32) if sum(i.startswith(full[:n]) for i in ids) == 1)
    proc = brainhands("sessions", "show", short, "--sessions", str(db), cwd=tmp_path)
    assert proc.returncode == 0 and full in proc.stdout, proc.stderr
