"""`python -m bench.workspace_bench`: what a session workspace made on first use costs the call that makes it.

Real gRPC hand servers in this process (fs and sandbox hands over per-session workspaces, and the fs hands over one
shared root, as before workspaces), called as the gateway would (tenant and session headers). For each case the
median and p90 of ROUNDS calls, in milliseconds:

- fs_write on the shared root (the always-ready service of before);
- fs_write as a session's first call: its workspace made empty, or copied from a source of FILES files;
- fs_write in a session whose workspace exists;
- sandbox_shell `true` in a fresh directory (before), as a session's first call, and in an existing workspace.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.report import Section, Table
from hands import HandClient, start
from hands import metadata as md
from hands.builtin.fs import make_fs_hands
from hands.builtin.sandbox import SandboxConfig, make_sandbox_hands
from hands.workspaces import SessionWorkspaces


async def _timed(client: HandClient, name: str, tool_input: dict, session: str, meta: dict[str, str]) -> float:
    started = time.perf_counter()
    reply = await client.execute(name, tool_input, session_id=session, metadata=meta, timeout=60)
    elapsed = (time.perf_counter() - started) * 1000
    if reply.is_error:
        raise RuntimeError(f"{name}: {reply.output}")
    return elapsed


def _median_p90(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def _row(label: str, samples: list[float]) -> str:
    median, p90 = _median_p90(samples)
    return f"| {label} | {median:.1f} | {p90:.1f} |"


async def run(rounds: int, files: int, isolation: str) -> list[str]:
    """The table, as Markdown lines."""
    samples = await measure(rounds, files, isolation)
    return ["| call | median ms | p90 ms |", "| --- | --- | --- |", *(_row(k, v) for k, v in samples.items())]


async def measure(rounds: int, files: int, isolation: str) -> dict[str, list[float]]:
    """Each case's ROUNDS call times in ms, by label."""
    base = Path(tempfile.mkdtemp(prefix="brainhands-workspace-bench-"))
    base.chmod(0o711)
    try:
        shared, root, source = base / "shared", base / "root", base / "source"
        for path in (shared, root, source):
            path.mkdir()
            path.chmod(0o711)
        for i in range(files):
            (source / f"pkg{i % 10}").mkdir(exist_ok=True)
            (source / f"pkg{i % 10}" / f"m{i}.py").write_text(f"VALUE = {i}\n" * 40)
        workspaces = SessionWorkspaces(root, (str(source),))
        sandbox = SandboxConfig(isolation=isolation, work_root=str(base))
        per_session = await start([*make_fs_hands(workspaces), *make_sandbox_hands(sandbox, workspaces)], port=0)
        before = await start([*make_fs_hands(shared), *make_sandbox_hands(sandbox)], port=0)
        async with HandClient(per_session.address) as ws_client, HandClient(before.address) as shared_client:
            tenant = {md.TENANT: "bench"}
            with_source = {**tenant, md.WORKSPACE: str(source)}
            write = {"path": "out.txt", "content": "x"}
            await _timed(shared_client, "fs_write", write, "warm", tenant)  # first-call costs of the server itself
            await _timed(ws_client, "fs_write", write, "warm", tenant)
            shell = {"command": "true"}
            cases = [  # label, client, hand, input, session of round i, metadata
                ("fs_write, shared root (always ready)", shared_client, "fs_write", write, lambda i: "s", tenant),
                ("fs_write, a session's first call (empty workspace made)", ws_client, "fs_write", write,
                 lambda i: f"e{i}", tenant),
                (f"fs_write, a session's first call (copy of {files} files made)", ws_client, "fs_write", write,
                 lambda i: f"c{i}", with_source),
                ("fs_write, a session whose workspace exists", ws_client, "fs_write", write, lambda i: "warm", tenant),
                (f"sandbox_shell true, fresh directory ({isolation})", shared_client, "sandbox_shell", shell,
                 lambda i: "s", tenant),
                ("sandbox_shell true, a session's first call (empty workspace made)", ws_client, "sandbox_shell", shell,
                 lambda i: f"x{i}", tenant),
                ("sandbox_shell true, a session whose workspace exists", ws_client, "sandbox_shell", shell,
                 lambda i: "warm", tenant),
            ]
            samples: dict[str, list[float]] = {case[0]: [] for case in cases}
            for i in range(rounds):  # interleaved: what else runs on the machine weighs on every case alike
                for label, client, name, tool_input, session, meta in cases:
                    samples[label].append(await _timed(client, name, tool_input, session(i), meta))
        for running in (per_session, before):
            await running.server.stop(0)
        return samples
    finally:
        shutil.rmtree(base, ignore_errors=True)


#: (rounds, files in the source) per mode of `python -m bench`
SIZES = {"smoke": (3, 50), "quick": (10, 200), "full": (30, 200)}


def section(mode: str) -> Section:
    """The report's section: `python -m bench --only workspaces`."""
    rounds, files = SIZES[mode]
    samples = asyncio.run(measure(rounds, files, "auto"))

    labels = list(samples)
    cells = {label: _median_p90(values) for label, values in samples.items()}
    first, ready = cells[labels[1]], cells[labels[0]]
    s = Section("workspaces", "9. Session workspaces: the first call makes the workspace")
    s.summary = (f"a session's first fs call makes its empty workspace (a git init and commit) in {first[0]:.0f} ms "
                 f"median, against {ready[0]:.1f} ms for the same call on an always-ready shared root")
    s.tables.append(Table(
        f"{rounds} calls per case, interleaved; real gRPC hand servers in one process, called as the gateway would",
        ["call", "median ms", "p90 ms"],
        [[label, f"{median:.1f}", f"{p90:.1f}"] for label, (median, p90) in cells.items()],
    ))
    s.notes.append("The first-call rows are the time a session waits before its first fs or sandbox call answers: "
                   "the workspace is made then (lazily), not before the session starts, so a session that never "
                   "touches files pays nothing. Later calls of the session cost what the shared root costs plus "
                   "finding the workspace. The sandbox rows run `true` with the isolation Describe names (bubblewrap "
                   "here).")
    s.data = {label: values for label, values in samples.items()}
    return s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workspace_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="calls per case (default 20)")
    parser.add_argument("--files", type=int, default=200, help="files in the source directory (default 200)")
    parser.add_argument("--isolation", default="auto", help="the sandbox's isolation (default auto)")
    args = parser.parse_args(argv)
    print("\n".join(asyncio.run(run(args.rounds, args.files, args.isolation))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
