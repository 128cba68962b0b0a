"""The fs hands against a hostile caller and a hostile neighbour: patterns that backtrack, paths swapped mid-call, long lines.

The fs service runs as its own process (python -m hands.builtin.fs), so a call that holds its
interpreter shows as the health check and fs_list timing out, as a gateway would see it.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hands import HandClient

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
CATASTROPHIC = "(a+)+$"  # exponential backtracking in Python's re on a run of a's that does not end the line
SWAP_SECONDS = float(os.environ.get("BRAINHANDS_FS_SWAP_SECONDS", "10"))


@pytest.fixture
async def fs_service(tmp_path):
    """start(workspace) -> (client, health stub, pid) for the fs service as a separate process."""
    procs, clients, channels = [], [], []

    async def start(workspace: Path):
        env = {**os.environ, "BRAINHANDS_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT), "BRAINHANDS_WORKSPACE": str(workspace)}
        log = tmp_path / f"fs-{len(procs)}.log"
        err = log.open("wb")  # noqa: ASYNC230 - a local file, opened once
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hands.builtin.fs", "--port", "0",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT,
            )
        finally:
            err.close()
        procs.append(proc)
        address = None
        async with asyncio.timeout(30):
            while address is None:
                for line in log.read_text().splitlines():
                    record = json.loads(line) if line.startswith("{") else {}
                    if record.get("event") == "serving hands":
                        address = record["address"]
                assert proc.returncode is None, log.read_text()[-2000:]
                await asyncio.sleep(0.05)
        client = HandClient(address)
        clients.append(client)
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        return client, health_pb2_grpc.HealthStub(channel), proc.pid

    yield start
    for client in clients:
        await client.close()
    for channel in channels:
        await channel.close()
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _answers(coro) -> tuple[bool, str]:
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return False, exc.code().name
    return True, "OK"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_catastrophic_pattern_cannot_freeze_the_fs_hand(fs_service, tmp_path, record):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "evil.txt").write_text("a" * 40 + "!\n")
    (workspace / "README.md").write_text("hello\n")
    client, health, _ = await fs_service(workspace)
    grep = asyncio.create_task(client.execute("fs_grep", {"pattern": CATASTROPHIC}, timeout=10))
    await asyncio.sleep(0.3)  # let the grep start before the other calls
    listed, list_code = await _answers(client.execute("fs_list", {}, timeout=2))
    healthy, health_code = await _answers(health.Check(health_pb2.HealthCheckRequest(), timeout=2))
    grep_ok, grep_code = await _answers(grep)
    record("fs hand under hostile input", f"fs_grep {CATASTROPHIC!r} on 40 a's and a '!'",
           "answered" if grep_ok and listed and healthy else "FROZE",
           grep=grep_code, concurrent_fs_list=list_code, health_check=health_code)
    assert listed and healthy, f"fs_list {list_code}, health {health_code} while fs_grep ran"
    assert grep_ok, f"fs_grep did not return within its deadline: {grep_code}"
    assert grep.result().output.startswith("[no matches")


async def test_a_grep_past_its_deadline_is_stopped_not_left_running(fs_service, tmp_path, record):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    line = b"a" * (1 << 20) + b"!\n"  # 1 MiB lines: slow under any engine, hopeless under a backtracking one
    for i in range(8):
        (workspace / f"big{i}.txt").write_bytes(line * 7)
    client, health, pid = await fs_service(workspace)
    try:
        await client.execute("fs_grep", {"pattern": CATASTROPHIC}, timeout=1)
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    # After the deadline the service must go quiet: sample its CPU time until two readings a second apart agree.
    idle = False
    before = _cpu_seconds(pid)
    for _ in range(15):
        await asyncio.sleep(1)
        now = _cpu_seconds(pid)
        if now - before < 0.08:  # an idle service spends next to nothing; a search, even niced, far more
            idle = True
            break
        before = now
    listed, list_code = await _answers(client.execute("fs_list", {}, timeout=5))
    record("fs hand under hostile input", "fs_grep over 56 MiB of 1 MiB lines, 1 s deadline",
           "stopped" if idle else "KEPT RUNNING", grep=code, fs_list_after=list_code)
    assert idle, "the fs service kept burning CPU after the grep's deadline"
    assert listed, list_code


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b, seconds = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3])
end = time.monotonic() + seconds
swaps = 0
while time.monotonic() < end:
    if libc.renameat2(-100, a, -100, b, 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
    swaps += 1
print(swaps)
"""


def _renameat2_works(tmp: Path) -> bool:
    (tmp / "x").mkdir()
    (tmp / "y").symlink_to("/")
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    return libc.renameat2(_AT_FDCWD, str(tmp / "x").encode(), _AT_FDCWD, str(tmp / "y").encode(), _RENAME_EXCHANGE) == 0


async def test_a_directory_swapped_for_a_symlink_mid_call_never_leads_outside(fs_service, tmp_path, record):
    probe = tmp_path / "probe"
    probe.mkdir()
    if not _renameat2_works(probe):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    (workspace / "d").mkdir(parents=True)
    outside.mkdir()
    (workspace / "d" / "note.txt").write_text("INSIDE\n")
    (outside / "note.txt").write_text("OUTSIDE\n")
    (outside / "outside-only.txt").write_text("OUTSIDE\n")
    (workspace / "s").symlink_to(outside)  # swapped with d, again and again, while the calls run
    client, _, _ = await fs_service(workspace)
    swapper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SWAPPER, str(workspace / "d"), str(workspace / "s"), str(SWAP_SECONDS),
        stdout=asyncio.subprocess.PIPE,
    )
    counts = {"reads": 0, "reads inside": 0, "reads outside": 0, "writes": 0, "refused": 0,
              "lists and greps": 0, "saw outside": 0}
    loop = asyncio.get_running_loop()
    end = loop.time() + SWAP_SECONDS

    async def reader():
        while loop.time() < end:
            result = await client.execute("fs_read", {"path": "d/note.txt"}, timeout=10)
            counts["reads"] += 1
            if "OUTSIDE" in result.output:
                counts["reads outside"] += 1
            elif result.output == "INSIDE\n":
                counts["reads inside"] += 1
            elif result.is_error:
                counts["refused"] += 1

    async def writer(n: int):
        i = 0
        while loop.time() < end:
            result = await client.execute("fs_write", {"path": f"d/w{n}-{i}.txt", "content": "x"}, timeout=10)
            counts["writes"] += 1
            counts["refused"] += result.is_error
            i += 1

    async def looker():
        while loop.time() < end:
            for name, args in (("fs_list", {"path": "d"}), ("fs_grep", {"pattern": "OUTSIDE", "path": "d"})):
                result = await client.execute(name, args, timeout=10)
                counts["lists and greps"] += 1
                counts["saw outside"] += "outside-only" in result.output or ": OUTSIDE" in result.output

    await asyncio.gather(*(reader() for _ in range(3)), *(writer(n) for n in range(3)), looker())
    swaps = int((await swapper.communicate())[0] or 0)
    landed_outside = sorted(p.name for p in outside.iterdir() if p.name not in ("note.txt", "outside-only.txt"))
    record("fs hand under hostile input", f"directory swapped with a symlink out for {SWAP_SECONDS:g} s",
           "contained" if not landed_outside and not counts["reads outside"] else "ESCAPED",
           swaps=swaps, writes_outside=len(landed_outside), **counts)
    assert swaps > 0, "the swapper never swapped"
    assert not landed_outside, f"{len(landed_outside)} fs_writes landed outside the workspace"
    assert counts["reads outside"] == 0, f"{counts['reads outside']} fs_reads returned the outside file"
    assert counts["saw outside"] == 0, f"{counts['saw outside']} fs_list/fs_grep calls showed the outside directory"
    assert counts["reads inside"] > 0, counts  # the calls did run while the race went on


async def test_a_first_line_longer_than_the_read_limit_can_be_read_whole(fs_service, tmp_path, record):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    first = "x" * (300 * 1024) + "END-OF-LINE-ONE"
    (workspace / "min.js").write_text(first + "\nsecond line\n")
    client, _, _ = await fs_service(workspace)
    got, byte_offset, calls = "", None, 0
    while calls < 10:
        args = {"path": "min.js"} if byte_offset is None else {"path": "min.js", "byte_offset": byte_offset}
        result = await client.execute("fs_read", args, timeout=10)
        calls += 1
        assert not result.is_error, result.output[:300]
        text, _, note = result.output.partition("\n[")
        got += text
        if "END-OF-LINE-ONE" in got:
            break
        assert "byte_offset=" in note, f"no way to read on: {note[:300]!r}"
        byte_offset = int(note.split("byte_offset=")[1].split()[0].rstrip("],"))
    after = await client.execute("fs_read", {"path": "min.js", "offset": 2}, timeout=10)
    record("fs hand under hostile input", "a 300 KiB first line (minified JS)",
           "readable" if got.startswith(first) and after.output == "second line\n" else "UNREADABLE",
           calls=calls, limit_bytes=256 * 1024)
    assert got.startswith(first), f"read {len(got)} characters of the first line in {calls} calls"
    assert after.output == "second line\n", after.output[:200]


def _write_one_line(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        f.write(b"y" * (1 << 20))
        for _ in range(mib - 1):
            f.write(b"z" * (1 << 20))  # text with no newline


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_reading_a_huge_file_without_newlines_stays_small(fs_service, tmp_path, record):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    _write_one_line(workspace / "one.txt", 256)
    client, _, pid = await fs_service(workspace)
    result = await client.execute("fs_read", {"path": "one.txt", "byte_length": 118}, timeout=30)
    assert result.output.startswith("y" * 118), result.output[:200]
    result = await client.execute("fs_read", {"path": "one.txt"}, timeout=30)
    peak = _rss_bytes(pid)
    record("fs hand under hostile input", "fs_read of a 256 MiB file with no newline", "bounded",
           peak_rss_mib=round(peak / (1 << 20), 1))
    assert "byte_offset=" in result.output[-400:], result.output[-400:]
    assert peak < 128 << 20, f"the fs service grew to {peak >> 20} MiB to read it"
