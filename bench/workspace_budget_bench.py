"""`python -m bench.workspace_budget_bench`: how well a session workspace's disk budget holds, and what it costs.

The sandbox itself (hands.builtin.sandbox.runner.Sandbox, the isolation the service would choose) runs in a workspace
tree on this machine's disk:

- **Overshoot**: writers as fast as they go — one Python process writing 32 MiB files in 1 MiB writes, and four `dd`
  loops at once writing 64 MiB files — run against a budget until the watch stops them; how far past the budget the
  tree got (median and most of ROUNDS) and how long the run took.
- **Cost**: the same runs with the budget and without it (no watch, no walks), interleaved round by round, in a tree
  of FILES files: `true`, and a run of about a second that writes 100 small files; wall ms (median) and this
  process's CPU ms per run (the watch's walks are in it; the sandboxed program's own CPU is not).
- **fs_write**: one fs_write of a new file with and without the budget check (which walks the tree), in the same tree.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from hands.builtin.fs import Workspace, _write
from hands.builtin.sandbox import SandboxConfig
from hands.builtin.sandbox.isolation import probe
from hands.builtin.sandbox.runner import Sandbox, claim_uids, probe_disk_budget
from hands.disk_budget import DiskBudget, size_words, usage

MIB = 1 << 20
PYTHON_WRITER = """
buf = b"x" * (1 << 20)
i = 0
while True:
    with open(f"py{i}", "wb") as f:
        for _ in range(32):
            f.write(buf)
    i += 1
"""
DD_WRITERS = ("for j in 1 2 3 4; do (i=0; while dd if=/dev/zero of=dd$j-$i bs=1M count=64 2>/dev/null; "
              "do i=$((i+1)); done) & done; wait")
NORMAL_RUN = ("import time\nfor i in range(100):\n    open(f'out{i}.txt', 'w').write('x' * 1000)\n"
              "end = time.monotonic() + 1\nwhile time.monotonic() < end:\n    sum(range(1000))\n")


def _sandbox(base: Path, isolation: str) -> Sandbox:
    config = SandboxConfig(isolation=isolation, work_root=str(base), max_concurrent=1)
    uids = claim_uids(config.uid_base, 1, config.uid_ranges) if os.geteuid() == 0 else [None]
    return Sandbox(config, probe(config, uids[0]), uids, probe_disk_budget(config.work_root))


def _fresh_tree(base: Path, files: int) -> Path:
    tree = base / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    tree.chmod(0o755)
    for i in range(files):
        (tree / f"pkg{i % 50}").mkdir(exist_ok=True)
        (tree / f"pkg{i % 50}" / f"m{i}.py").write_text(f"VALUE = {i}\n" * 20)
    return tree


async def overshoot(sandbox: Sandbox, base: Path, budget_bytes: int, rounds: int) -> list[str]:
    budget = DiskBudget(budget_bytes, 100_000)
    rows = []
    for label, argv in (("python, 32 MiB files", [sandbox.config.python, "-c", PYTHON_WRITER]),
                        ("4 x dd, 64 MiB files", [sandbox.config.shell, "-c", DD_WRITERS])):
        past, took = [], []
        for _ in range(rounds):
            tree = _fresh_tree(base, 0)
            result = await sandbox.run(argv, files={}, stdin=None, timeout=120, workspace=str(tree), budget=budget)
            if not result.stopped:
                raise RuntimeError(f"{label}: not stopped: {result.output[-300:]}")
            past.append(usage(tree).bytes - budget_bytes)
            took.append(result.duration)
        rows.append(f"| {label}, budget {size_words(budget_bytes)} | {size_words(int(statistics.median(past)))} | "
                    f"{size_words(max(past))} | {statistics.median(took):.2f} |")
    shutil.rmtree(base / "tree", ignore_errors=True)
    return ["| writer | past the budget, median | most | run s, median |", "| --- | --- | --- | --- |", *rows]


async def cost(sandbox: Sandbox, base: Path, files: int, rounds: int) -> list[str]:
    tree = _fresh_tree(base, files)
    budget = DiskBudget(1 << 30, 1_000_000)
    cases = [("true", [sandbox.config.shell, "-c", "true"], {}),
             ("1 s run writing 100 files", [sandbox.config.python, "main.py"], {"main.py": NORMAL_RUN})]
    samples: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for label, argv, program in cases:
            for budgeted in (False, True):
                cpu, wall = time.process_time(), time.perf_counter()
                result = await sandbox.run(argv, files=program, stdin=None, timeout=60, workspace=str(tree),
                                           budget=budget if budgeted else None)
                if result.returncode != 0 or result.stopped:
                    raise RuntimeError(f"{label}: {result.output[-300:]}")
                samples.setdefault((label, budgeted), []).append(
                    ((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
    rows = []
    for label, _, _ in cases:
        (bare_wall, bare_cpu), (with_wall, with_cpu) = (
            (statistics.median(w for w, _ in samples[(label, b)]), statistics.median(c for _, c in samples[(label, b)]))
            for b in (False, True))
        rows.append(f"| {label} | {bare_wall:.1f} | {with_wall:.1f} | {bare_cpu:.1f} | {with_cpu:.1f} |")
    writes = {}
    for budgeted in (False, True):
        ws = Workspace(tree, budget if budgeted else None)
        took = []
        for i in range(rounds * 5):
            started = time.perf_counter()
            _write(ws, f"note-{budgeted}-{i}.txt", "x" * 100)  # a new file: the check walks the tree
            took.append((time.perf_counter() - started) * 1000)
        writes[budgeted] = statistics.median(took)
    rows.append(f"| fs_write of a new 100-byte file (the function, no RPC) | {writes[False]:.2f} | {writes[True]:.2f} | | |")
    walk = time.perf_counter()
    used = usage(tree)
    walk = (time.perf_counter() - walk) * 1000
    shutil.rmtree(tree, ignore_errors=True)
    return [f"Tree at the end: {used.files} files and directories ({size_words(used.bytes)}); one walk {walk:.1f} ms.", "",
            "| run | wall ms, no budget | wall ms, budget | service CPU ms, no budget | service CPU ms, budget |",
            "| --- | --- | --- | --- | --- |", *rows]


async def run(rounds: int, files: int, isolation: str, budgets: list[int]) -> list[str]:
    base = Path(tempfile.mkdtemp(prefix="brainhands-budget-bench-", dir="/var/tmp"))
    base.chmod(0o711)
    try:
        sandbox = _sandbox(base, isolation)
        out = [f"Isolation: {sandbox.isolation.mode}; as root: {os.geteuid() == 0}.", ""]
        for budget in budgets:
            out += [*await overshoot(sandbox, base, budget, rounds), ""]
        for n in (0, files):
            out += [*await cost(sandbox, base, n, rounds), ""]
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workspace_budget_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="runs per case (default 5)")
    parser.add_argument("--files", type=int, default=20_000, help="files in the tree the costs are measured in "
                        "(default 20000; an empty tree too)")
    parser.add_argument("--isolation", default="auto", help="the sandbox's isolation (default auto)")
    parser.add_argument("--budget", type=int, action="append", help="a budget in bytes to overshoot (repeatable; "
                        "default 64 MiB and 1 GiB)")
    args = parser.parse_args(argv)
    print("\n".join(asyncio.run(run(args.rounds, args.files, args.isolation, args.budget or [64 * MIB, 1 << 30]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
