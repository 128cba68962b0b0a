"""The watch that stops a sandbox run whose session workspace passes its disk budget.

No quota the service could set without owning the filesystem bounds a directory tree, so the tree is measured while
the run goes on, on a thread of its own: walked every WALK_EVERY seconds, and at once when the filesystem under it
fills (or uses up inodes) faster than the run's headroom allows, which statvfs, one cheap call every POLL seconds,
shows. When the tree is past its budget the run's process group is killed; the caller kills the rest of it as after
any run. A writer can overshoot by what it writes between a poll and the kill (bench/workspace_budget_bench.py measures it);
RLIMIT_FSIZE at the budget bounds a single file outright.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from hands.disk_budget import DiskBudget, Usage, usage

POLL = 0.02  # seconds between statvfs calls
WALK_EVERY = 0.5  # seconds between walks when the filesystem shows no sudden growth (more for a costly walk)


def _filesystem(path: str) -> tuple[int, int]:
    """(bytes used, inodes used) on the filesystem holding path; (0, 0) if it cannot be read."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree


class BudgetWatch:
    """Watches tree during one run; stops the run's process group (pgid) when the tree passes budget.

    A tree that was already over its budget when the run began may not grow further: the bounds are the larger of
    the budget and the use at the start (start), so a run that removes files is left to do it.
    """

    def __init__(self, tree: str, budget: DiskBudget, start: Usage, pgid: int):
        self.tree, self.budget, self.start_usage, self.pgid = tree, budget, start, pgid
        self.bytes_allowed = max(budget.max_bytes, start.bytes)
        self.files_allowed = max(budget.max_files, start.files)
        self.over: Usage | None = None  # the use that made the watch stop the run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sandbox-budget", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the watch (blocks until its thread has, at most one walk's time)."""
        self._stop.set()
        self._thread.join()

    def exceeded(self, used: Usage) -> bool:
        return self.budget.exceeded(used, self.bytes_allowed, self.files_allowed)

    def _watch(self) -> None:
        used = self.start_usage
        walked_at, walk_cost = time.monotonic(), 0.0
        disk_at_walk, inodes_at_walk = _filesystem(self.tree)
        while not self._stop.wait(POLL):
            disk, inodes = _filesystem(self.tree)
            since = time.monotonic() - walked_at
            # Growth anywhere on the filesystem is an upper bound on the tree's (unless something else frees space
            # meanwhile, which the regular walk catches); a walk costs, so at most a fifth of the time goes to them.
            filling = (disk - disk_at_walk > self.bytes_allowed - used.bytes
                       or inodes - inodes_at_walk > self.files_allowed - used.files)
            if not (since >= max(WALK_EVERY, 10 * walk_cost) or (filling and since >= 4 * walk_cost)):
                continue
            disk_at_walk, inodes_at_walk = disk, inodes
            began = time.monotonic()
            used = usage(self.tree, self.bytes_allowed, self.files_allowed)  # it need not walk on once past them
            walked_at = time.monotonic()
            walk_cost = walked_at - began
            if self.exceeded(used):
                self.over = used
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pgid, signal.SIGKILL)
                return
