"""A session workspace's disk budget: how much its tree holds, measured one way for the fs and the sandbox hands.

A tree's use is the bytes of its entries (each file, directory and symlink counted at its size or at the disk space
it takes, whichever is more, so neither a sparse file nor a heap of tiny ones slips under) and their number. Files
hard-linked together count once. The walk never follows a symlink and stops as soon as the tree is past its budget:
an over-full tree (or one a run rearranges while it is walked) costs a bounded walk, never one of the whole disk.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

MAX_BYTES_ENV = "BRAINHANDS_WORKSPACE_MAX_BYTES"
MAX_FILES_ENV = "BRAINHANDS_WORKSPACE_MAX_FILES"


def size_words(n: int) -> str:
    """1073741824 -> '1 GiB', 1536 -> '1.5 KiB'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Usage:
    """What a tree holds: bytes and entries (files, directories, symlinks); partial when the walk stopped early."""

    bytes: int
    files: int
    partial: bool = False

    def words(self) -> str:
        more = "at least " if self.partial else ""
        what = "file or directory" if self.files == 1 else "files and directories"
        return f"{more}{size_words(self.bytes)} in {more}{self.files} {what}"


@dataclass(frozen=True)
class DiskBudget:
    """The most one session's tree may hold: max_bytes and max_files (its entries)."""

    max_bytes: int
    max_files: int

    def words(self) -> str:
        return (f"its disk budget of {size_words(self.max_bytes)} and {self.max_files} files "
                f"({MAX_BYTES_ENV}, {MAX_FILES_ENV})")

    def measure(self, tree: str | os.PathLike) -> Usage:
        """The tree's use; the walk stops (partial) once it is past four times the budget."""
        return usage(tree, 4 * self.max_bytes, 4 * self.max_files)

    def exceeded(self, used: Usage, bytes_allowed: int | None = None, files_allowed: int | None = None) -> bool:
        """Whether used is past the budget (or past the larger bounds given, for a tree that started over it)."""
        return (used.bytes > max(self.max_bytes, bytes_allowed or 0)
                or used.files > max(self.max_files, files_allowed or 0))


def usage(tree: str | os.PathLike, stop_bytes: int | None = None, stop_files: int | None = None) -> Usage:
    """The bytes and entries below tree (not counting tree itself), the walk stopping once past either bound."""
    total = count = 0
    linked: set[tuple[int, int]] = set()
    pending = [os.fspath(tree)]
    while pending:
        try:
            listing = os.scandir(pending.pop())
        except OSError:  # removed meanwhile, or no longer a directory
            continue
        with listing:
            for entry in listing:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in linked:
                        continue
                    linked.add((st.st_dev, st.st_ino))
                count += 1
                total += max(st.st_size, st.st_blocks * 512)
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
                if (stop_bytes is not None and total > stop_bytes) or (stop_files is not None and count > stop_files):
                    return Usage(total, count, partial=True)
    return Usage(total, count)
