"""The fs hands through a real gRPC hand server: confinement to the workspace, atomic writes, safe concurrent edits."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest

from hands.builtin.fs import FsConfig, make_fs_hands
from tests.procs import start_service

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("import os\n\ndef main():\n    return 'hello'\n")
    (root / "src" / "util.py").write_text("def helper():\n    return 42\n")
    (root / "README.md").write_text("# Demo\nhello world\n")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-42\n")
    return root


@pytest.fixture
async def fs(workspace, hand_service, hand_client):
    """A client to a real fs hand server over the workspace; call(name, **input) -> ExecuteResponse."""
    running = await hand_service(make_fs_hands(workspace))
    client = hand_client(running.address)

    async def call(name, **kwargs):
        return await client.execute(name, kwargs, timeout=30)

    return call


ESCAPES = [
    ("../secret.txt", "'..'"),
    ("src/../../secret.txt", "'..'"),
    ("/etc/passwd", "absolute path"),
    ("out/secret.txt", "outside the workspace"),  # out -> a directory outside
    ("out-file", "outside the workspace"),  # a symlink to a file outside
    ("src/app.py\x00.txt", "NUL byte"),
    ("a/" * 2100 + "x", "limit is 4096"),
    ("x" * 300, "longer than 255 bytes"),
]


@pytest.mark.parametrize("path,why", ESCAPES, ids=[e[1] + f"-{i}" for i, e in enumerate(ESCAPES)])
@pytest.mark.parametrize("hand_name", ["fs_read", "fs_write", "fs_list", "fs_edit", "fs_grep"])
async def test_every_escape_is_refused_with_a_clear_error(fs, workspace, path, why, hand_name):
    (workspace / "out").symlink_to(workspace.parent)
    (workspace / "out-file").symlink_to(workspace.parent / "secret.txt")
    inputs = {
        "fs_read": {"path": path},
        "fs_write": {"path": path, "content": "pwned\n"},
        "fs_list": {"path": path},
        "fs_edit": {"path": path, "old": "TOP-SECRET", "new": "pwned"},
        "fs_grep": {"pattern": "TOP-SECRET", "path": path},
    }[hand_name]

    result = await fs(hand_name, **inputs)

    assert result.is_error, result.output
    assert why in result.output
    assert "TOP-SECRET" not in result.output
    assert (workspace.parent / "secret.txt").read_text() == "TOP-SECRET-42\n"


async def test_symlink_inside_the_workspace_is_followed(fs, workspace):
    (workspace / "link.py").symlink_to(workspace / "src" / "app.py")
    result = await fs("fs_read", path="link.py")
    assert not result.is_error
    assert "def main" in result.output


async def test_read_refuses_what_is_not_a_regular_file(fs, workspace):
    os.mkfifo(workspace / "pipe")
    fifo = await fs("fs_read", path="pipe")
    directory = await fs("fs_read", path="src")
    missing = await fs("fs_read", path="nope.txt")
    assert fifo.is_error and "not a regular file" in fifo.output
    assert directory.is_error and "is a directory" in directory.output
    assert missing.is_error and "no such file" in missing.output


async def test_read_line_range_and_binary(fs, workspace):
    (workspace / "lines.txt").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    (workspace / "blob.bin").write_bytes(b"\x89PNG\x00\x01\x02" * 100)

    whole = await fs("fs_read", path="src/app.py")
    window = await fs("fs_read", path="lines.txt", offset=10, limit=3)
    tail = await fs("fs_read", path="lines.txt", offset=99)
    binary = await fs("fs_read", path="blob.bin")
    bad = await fs("fs_read", path="lines.txt", offset=0)

    assert whole.output == (workspace / "src" / "app.py").read_text()
    assert window.output.startswith("line 10\nline 11\nline 12\n")
    assert "line 13" not in window.output.split("[")[0]
    assert "offset=13" in window.output
    assert tail.output == "line 99\nline 100\n"
    assert not binary.is_error and "binary file (700 bytes)" in binary.output and "PNG" not in binary.output
    assert bad.is_error


async def test_read_is_capped_with_a_note(workspace, hand_service, hand_client):
    (workspace / "big.txt").write_text("".join(f"{i:08d}\n" for i in range(10_000)))  # 90,000 bytes
    running = await hand_service(make_fs_hands(workspace, FsConfig(max_read_bytes=1000)))
    result = await hand_client(running.address).execute("fs_read", {"path": "big.txt"})
    body, note = result.output.rsplit("\n[", 1)
    assert len(body.encode()) <= 1000
    assert body.startswith("00000000\n")
    assert "truncated" in note and "90000 bytes" in note and "offset=112" in note


async def test_list_flat_recursive_pattern_and_bound(fs, workspace, hand_service, hand_client):
    flat = await fs("fs_list")
    deep = await fs("fs_list", recursive=True)
    py = await fs("fs_list", path="src", pattern="*.py")
    not_dir = await fs("fs_list", path="README.md")

    assert flat.output.splitlines() == ["README.md", "src/"]
    assert deep.output.splitlines() == ["README.md", "src/", "src/app.py", "src/util.py"]
    assert py.output.splitlines() == ["src/app.py", "src/util.py"]
    assert not_dir.is_error

    for i in range(30):
        (workspace / f"f{i:02d}").write_text("x")
    running = await hand_service(make_fs_hands(workspace, FsConfig(max_list_entries=10)))
    bounded = await hand_client(running.address).execute("fs_list", {})
    lines = bounded.output.splitlines()
    assert len(lines) == 11 and "stopped at 10 entries" in lines[-1]


async def test_grep_matches_glob_bound_and_bad_regex(fs, workspace):
    found = await fs("fs_grep", pattern=r"def \w+\(")
    only_md = await fs("fs_grep", pattern="hello", glob="*.md")
    nocase = await fs("fs_grep", pattern="DEMO", ignore_case=True)
    none = await fs("fs_grep", pattern="zebra")
    bad = await fs("fs_grep", pattern="(unclosed")

    assert found.output.splitlines() == ["src/app.py:3: def main():", "src/util.py:1: def helper():"]
    assert only_md.output == "README.md:2: hello world"
    assert nocase.output == "README.md:1: # Demo"
    assert not none.is_error and "no matches" in none.output
    assert bad.is_error and "invalid regular expression" in bad.output


async def test_grep_stops_at_the_match_bound(workspace, hand_service, hand_client):
    (workspace / "many.txt").write_text("hit\n" * 500)
    running = await hand_service(make_fs_hands(workspace, FsConfig(max_grep_matches=5)))
    result = await hand_client(running.address).execute("fs_grep", {"pattern": "hit"})
    lines = result.output.splitlines()
    assert lines[:5] == [f"many.txt:{i}: hit" for i in range(1, 6)]
    assert len(lines) == 6 and "stopped at 5 matches" in lines[5]


async def test_write_creates_parents_keeps_mode_and_leaves_no_temp_files(fs, workspace):
    created = await fs("fs_write", path="new/deep/file.txt", content="one\n")
    assert not created.is_error and "created" in created.output
    assert (workspace / "new" / "deep" / "file.txt").read_text() == "one\n"

    script = workspace / "run.sh"
    script.write_text("#!/bin/sh\necho old\n")
    script.chmod(0o750)
    replaced = await fs("fs_write", path="run.sh", content="#!/bin/sh\necho new\n")
    assert "replaced" in replaced.output
    assert script.read_text().endswith("echo new\n")
    assert (script.stat().st_mode & 0o777) == 0o750

    edited = await fs("fs_edit", path="run.sh", old="echo new", new="echo newer")
    assert not edited.is_error
    assert (script.stat().st_mode & 0o777) == 0o750

    onto_dir = await fs("fs_write", path="src", content="x")
    assert onto_dir.is_error and (workspace / "src").is_dir()
    leftovers = [p for p in workspace.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


async def test_a_reader_never_sees_a_half_written_file(fs, workspace):
    versions = ["A" * 2_000_000, "B" * 2_000_000]
    (workspace / "big.txt").write_text(versions[0])
    target = workspace / "big.txt"
    seen: set[str] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            content = target.read_text()
            seen.add("ok" if content in versions else f"torn ({len(content)} bytes)")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(8):
            result = await fs("fs_write", path="big.txt", content=versions[(i + 1) % 2])
            assert not result.is_error, result.output
    finally:
        stop.set()
        thread.join()
    assert seen == {"ok"}
    assert [p.name for p in workspace.iterdir() if p.name.startswith(".big.txt")] == []


async def test_edit_needs_old_exactly_once(fs, workspace):
    (workspace / "twice.txt").write_text("x = 1\nx = 1\n")
    missing = await fs("fs_edit", path="src/app.py", old="goodbye", new="bye")
    twice = await fs("fs_edit", path="twice.txt", old="x = 1", new="x = 2")
    ok = await fs("fs_edit", path="src/app.py", old="return 'hello'", new="return 'hi'")

    assert missing.is_error and "old text not found" in missing.output
    assert twice.is_error and "occurs 2 times" in twice.output
    assert (workspace / "twice.txt").read_text() == "x = 1\nx = 1\n"
    assert not ok.is_error and "line 4" in ok.output
    assert (workspace / "src" / "app.py").read_text().endswith("    return 'hi'\n")


async def test_two_concurrent_edits_of_the_same_text_exactly_one_wins(fs, workspace):
    target = workspace / "src" / "util.py"
    for round_ in range(10):
        target.write_text("def helper():\n    return 42\n")
        a, b = await asyncio.gather(
            fs("fs_edit", path="src/util.py", old="return 42", new=f"return 'a{round_}'"),
            fs("fs_edit", path="src/util.py", old="return 42", new=f"return 'b{round_}'"),
        )
        assert sorted([a.is_error, b.is_error]) == [False, True]
        loser = a if a.is_error else b
        assert "old text not found" in loser.output
        winner = "a" if b.is_error else "b"
        assert target.read_text() == f"def helper():\n    return '{winner}{round_}'\n"


async def test_edits_from_two_services_on_one_workspace_serialize_through_the_file_lock(
    workspace, hand_service, hand_client
):
    # Two services (separate in-process locks) share one directory, as two replicas on one volume would:
    # only the flock and the compare-before-replace keep one edit from overwriting the other.
    first = hand_client((await hand_service(make_fs_hands(workspace))).address)
    second = hand_client((await hand_service(make_fs_hands(workspace))).address)
    target = workspace / "counter.txt"
    for round_ in range(10):
        target.write_text("value = 0\n")
        a, b = await asyncio.gather(
            first.execute("fs_edit", {"path": "counter.txt", "old": "value = 0", "new": "value = 1"}),
            second.execute("fs_edit", {"path": "counter.txt", "old": "value = 0", "new": "value = 2"}),
        )
        assert sorted([a.is_error, b.is_error]) == [False, True], (round_, a.output, b.output)
        assert target.read_text() == ("value = 1\n" if not a.is_error else "value = 2\n")


async def test_describe_marks_read_only_hands_idempotent(workspace, hand_service, hand_client):
    running = await hand_service(make_fs_hands(workspace))
    specs = {s.name: s for s in await hand_client(running.address).describe()}
    assert set(specs) == {"fs_list", "fs_read", "fs_grep", "fs_write", "fs_edit"}
    assert {n for n, s in specs.items() if s.idempotent} == {"fs_list", "fs_read", "fs_grep"}
    assert json.loads(specs["fs_edit"].input_schema_json)["required"] == ["path", "old", "new"]


def test_hands_factory_reads_the_workspace_from_the_environment(workspace, monkeypatch):
    from hands.builtin import fs as fs_module

    monkeypatch.setenv("BRAINHANDS_WORKSPACE", str(workspace))
    assert [h.name for h in fs_module.HANDS()] == ["fs_list", "fs_read", "fs_grep", "fs_write", "fs_edit"]
    monkeypatch.setenv("BRAINHANDS_WORKSPACE", str(workspace / "missing"))
    with pytest.raises(ValueError, match="BRAINHANDS_WORKSPACE"):
        fs_module.HANDS()


async def test_runs_as_its_own_service_process(workspace, hand_client):
    service = start_service(["--port", "0"], module="hands.builtin.fs", env={"BRAINHANDS_WORKSPACE": str(workspace)},
                            timeout=60)  # fmt: skip
    try:
        result = await hand_client(service.address).execute("fs_read", {"path": "README.md"}, timeout=10)
        assert result.output == "# Demo\nhello world\n"
    finally:
        service.stop()


async def test_read_by_byte_offset_and_length(fs, workspace):
    (workspace / "u.txt").write_text("héllo wörld\nsecond\n")
    head = await fs("fs_read", path="u.txt", byte_length=2)  # "h" and the first byte of "é": stops before it
    rest = await fs("fs_read", path="u.txt", byte_offset=1, byte_length=6)
    past = await fs("fs_read", path="u.txt", byte_offset=10_000)
    assert head.output.startswith("h\n[bytes 0-0 of 21") and "byte_offset=1" in head.output
    assert rest.output.startswith("éllo ")
    assert past.is_error is False and "nothing at byte_offset 10000" in past.output


async def test_a_line_longer_than_the_limit_is_shown_in_part_with_where_to_read_on(workspace, hand_service, hand_client):
    (workspace / "long.txt").write_text("a" * 5000 + "\nshort\n")
    running = await hand_service(make_fs_hands(workspace, FsConfig(max_read_bytes=1000)))
    client = hand_client(running.address)
    first = await client.execute("fs_read", {"path": "long.txt"})
    body, note = first.output.rsplit("\n[", 1)
    assert body == "a" * 1000 and "byte_offset=1000" in note and "offset=2" in note
    after = await client.execute("fs_read", {"path": "long.txt", "offset": 2})
    assert after.output == "short\n"


async def test_edit_refuses_a_file_over_its_stated_limit(workspace, hand_service, hand_client):
    (workspace / "big.txt").write_text("x" * 5000 + "needle\n")
    running = await hand_service(make_fs_hands(workspace, FsConfig(max_edit_bytes=4096)))
    client = hand_client(running.address)
    result = await client.execute("fs_edit", {"path": "big.txt", "old": "needle", "new": "pin"})
    assert result.is_error and "at most 4096 bytes" in result.output
    specs = {s.name: s for s in await client.describe()}
    assert "4096 bytes" in specs["fs_edit"].description


async def test_grep_takes_re2_syntax_and_names_it_when_a_pattern_is_refused(fs):
    found = await fs("fs_grep", pattern=r"def \w+\(")
    refused = await fs("fs_grep", pattern=r"(a)\1")
    assert "src/app.py:3: def main():" in found.output
    assert refused.is_error and "RE2 syntax" in refused.output


async def test_a_symlinked_directory_inside_the_workspace_is_followed_and_one_out_is_not(fs, workspace):
    (workspace / "alias").symlink_to("src")
    (workspace / "src" / "up").symlink_to("../..")  # climbs out of the root from inside a subdirectory
    inside = await fs("fs_read", path="alias/util.py")
    out = await fs("fs_read", path="src/up/secret.txt")
    written = await fs("fs_write", path="src/up/pwned.txt", content="x")
    assert inside.output == "def helper():\n    return 42\n"
    assert out.is_error and "outside the workspace" in out.output
    assert written.is_error and not (workspace.parent / "pwned.txt").exists()
