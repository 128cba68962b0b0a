"""The fs hands: list, read, grep, write and edit files inside one workspace root, never outside it.

Every path is walked one component at a time from a descriptor of the root (O_NOFOLLOW on each
step, symlinks read and resolved beneath the root by hand), and the operation is done on the
descriptor that walk ends at: nothing is checked by path and then reopened by path, so another
process swapping a directory for a symlink mid-call cannot make a call reach outside the root.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import fcntl
import fnmatch
import os
import secrets
import stat
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import re2
import structlog

from hands import Context, Hand, HandError, hand
from hands.disk_budget import DiskBudget, size_words
from hands.workspaces import SessionWorkspaces, workspaces_from_env

log = structlog.get_logger("hands.fs")

WORKSPACE_ENV = "BRAINHANDS_WORKSPACE"
MAX_PATH_BYTES = 4096  # PATH_MAX on Linux
MAX_NAME_BYTES = 255  # NAME_MAX on Linux
_BINARY_SNIFF_BYTES = 8192
_CHUNK = 64 * 1024  # reads go through the file in pieces of at most this many bytes
_MAX_SYMLINKS = 40  # as the kernel's own limit on links followed in one lookup
_MAX_DEPTH = 128  # directory levels a recursive listing or grep descends
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO is refused by the regular-file check after opening, not waited on.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class FsConfig:
    """Bounds on what one fs call may read or return, so a huge file cannot flood the model's context."""

    max_read_bytes: int = 256 * 1024
    max_list_entries: int = 1000
    max_grep_matches: int = 200
    max_grep_file_bytes: int = 8 * 1024 * 1024  # larger files are skipped by fs_grep
    max_grep_line_chars: int = 400
    max_grep_line_bytes: int = 1024 * 1024  # a longer line is searched in pieces of this size
    max_edit_bytes: int = 8 * 1024 * 1024  # fs_edit refuses larger files (it reads the whole file)
    grep_timeout: float = 60.0  # seconds one fs_grep may run before it is stopped
    grep_workers: int = 2  # fs_grep calls searching at once; more wait, while list and read go on

    def __post_init__(self) -> None:
        for key in ("max_read_bytes", "max_list_entries", "max_grep_matches", "max_grep_file_bytes",
                    "max_grep_line_chars", "max_grep_line_bytes", "max_edit_bytes", "grep_workers"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"fs config: {key} must be a positive integer, not {value!r}")
        if isinstance(self.grep_timeout, bool) or not isinstance(self.grep_timeout, int | float) or self.grep_timeout <= 0:
            raise ValueError(f"fs config: grep_timeout must be a positive number, not {self.grep_timeout!r}")


def _escape(rel: str) -> HandError:
    return HandError(f"path {rel[:200]!r} refused: it resolves outside the workspace (through a symlink)")


class Workspace:
    """A root directory and the walk that keeps every path a hand touches inside it; writes within budget, if any."""

    def __init__(self, root: str | os.PathLike, budget: DiskBudget | None = None):
        path = Path(root)
        if not path.is_dir():
            raise ValueError(f"workspace root {str(root)!r} is not a directory")
        self.root = Path(os.path.realpath(path))
        self.budget = budget

    def check_budget(self, rel: str, new_size: int, old: os.stat_result | None) -> None:
        """HandError if writing new_size bytes over old (None: a new file) would take the tree past its budget.

        A write that does not grow the tree is let through even when it is over (it can only help); so is any
        write without a budget (one shared root).
        """
        if self.budget is None:
            return
        old_bytes = 0 if old is None else max(old.st_size, old.st_blocks * 512)
        grows, adds = new_size - old_bytes, int(old is None)
        if grows <= 0 and not adds:
            return
        used = self.budget.measure(self.root)
        if used.bytes + max(grows, 0) > self.budget.max_bytes or used.files + adds > self.budget.max_files:
            raise HandError(
                f"{rel[:200]}: refused: writing {size_words(new_size)} would take the workspace past "
                f"{self.budget.words()}; it holds {used.words()} now. Nothing was changed: remove files "
                "(e.g. with sandbox_shell rm) or write less"
            )

    def parts(self, rel: str) -> list[str]:
        """The components of a workspace-relative path, or HandError saying why the path is refused."""
        if "\x00" in rel:
            raise HandError("path contains a NUL byte; give a plain relative path")
        encoded = rel.encode("utf-8", "surrogateescape")
        if len(encoded) > MAX_PATH_BYTES:
            raise HandError(f"path is {len(encoded)} bytes long; the limit is {MAX_PATH_BYTES}")
        if os.path.isabs(rel):
            raise HandError(f"absolute path {rel[:200]!r} refused: paths are relative to the workspace root")
        parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
        for part in parts:
            if part == "..":
                raise HandError(f"path {rel[:200]!r} refused: '..' may not leave or climb the workspace")
            if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                raise HandError(f"path component {part[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
        return parts

    def display(self, rel: str) -> str:
        return "/".join(self.parts(rel)) or "."

    def locate(self, rel: str, *, make_parents: bool = False) -> tuple[int, str | None]:
        """Walk rel beneath the root: (fd, None) if it names a directory, else (fd of its parent, final name).

        The final name may be missing or a non-directory; the caller opens it relative to the
        returned descriptor with O_NOFOLLOW and owns (must close) the descriptor. A symlink on
        the way is read and its target walked in its place, from the directory holding it; a
        target that is absolute (outside the root's own path) or climbs above the root is refused.
        """
        parts = self.parts(rel)
        stack = [os.open(self.root, _DIR_FLAGS)]
        pending = deque(parts)
        links = 0
        try:
            while pending:
                name = pending.popleft()
                if name in ("", "."):
                    continue
                if name == "..":  # only ever from a symlink's target
                    if len(stack) == 1:
                        raise _escape(rel)
                    os.close(stack.pop())
                    continue
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=stack[-1])
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        try:
                            target = os.readlink(name, dir_fd=stack[-1])
                        except OSError:
                            target = None
                        if target is not None:
                            links += 1
                            if links > _MAX_SYMLINKS:
                                raise HandError(f"{rel[:200]}: too many levels of symlinks") from None
                            stack, steps = self._follow(target, stack, rel)
                            pending.extendleft(reversed(steps))
                            continue
                        if not pending:  # the final component is a file (or other non-directory)
                            return stack.pop(), name
                        raise HandError(f"{rel[:200]}: {name[:80]!r} is a file, not a directory") from None
                    if exc.errno == errno.ENOENT:
                        if not pending:
                            return stack.pop(), name
                        if make_parents:
                            with contextlib.suppress(FileExistsError):
                                os.mkdir(name, dir_fd=stack[-1])
                            pending.appendleft(name)  # open what is there now, through the same checks
                            continue
                        raise HandError(f"{rel[:200]}: no such file or directory in the workspace") from None
                    raise HandError(f"{rel[:200]}: cannot open {name[:80]!r} ({exc.strerror})") from None
                stack.append(fd)
            return stack.pop(), None
        finally:
            for fd in stack:
                os.close(fd)

    def _follow(self, target: str, stack: list[int], rel: str) -> tuple[list[int], list[str]]:
        """The directory stack a symlink's target is walked from, and its steps; an absolute one must lie in the root."""
        if not target.startswith("/"):
            return stack, target.split("/")
        inside = os.path.normpath(target)
        root = str(self.root)
        if inside != root and not inside.startswith(root.rstrip("/") + "/"):
            raise _escape(rel)
        for fd in stack[1:]:
            os.close(fd)
        return stack[:1], inside[len(root):].split("/")  # walked from the root, '..' still checked step by step

    def open_file(self, rel: str) -> tuple[int, os.stat_result]:
        """A read-only descriptor of the regular file rel names, and its stat; HandError if it is not one."""
        dir_fd, name = self.locate(rel)
        try:
            if name is None:
                raise HandError(f"{self.display(rel)} is a directory, not a file; use fs_list to see what it holds")
            fd = _open_in(dir_fd, name, rel)
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if stat.S_ISDIR(st.st_mode):
                raise HandError(f"{self.display(rel)} is a directory, not a file; use fs_list to see what it holds")
            raise HandError(f"{self.display(rel)} is not a regular file (device, socket or pipe); refused")
        return fd, st


def _open_in(dir_fd: int, name: str, rel: str) -> int:
    try:
        return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise HandError(f"{rel[:200]}: no such file in the workspace") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it became a symlink after the walk looked at it
            raise HandError(f"{rel[:200]}: the path changed while it was being opened; try again") from None
        raise HandError(f"{rel[:200]}: cannot open ({exc.strerror})") from None


# ---- reading ---------------------------------------------------------------------------------------------


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head


def _decode_whole_chars(data: bytes, at_end: bool) -> tuple[str, int]:
    """data decoded as UTF-8, stopping before a character cut off at its end; and the bytes used."""
    if at_end:
        return data.decode("utf-8", "replace"), len(data)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(data, final=False)
    left = len(decoder.getstate()[0])
    return text, len(data) - left


def _read_bytes(f, cfg: FsConfig, shown: str, size: int, byte_offset: int, byte_length: int | None) -> str:
    want = cfg.max_read_bytes if byte_length is None else min(byte_length, cfg.max_read_bytes)
    if byte_offset >= size:
        return f"[{shown} has {size} bytes; nothing at byte_offset {byte_offset}]"
    f.seek(byte_offset)
    data = f.read(want)
    end = byte_offset + len(data)
    text, used = _decode_whole_chars(data, at_end=end >= size)
    if used == 0 and data:  # less than one whole character asked for (or bytes that are not UTF-8): show them
        text, used = data.decode("utf-8", "replace"), len(data)
    end = byte_offset + used
    if end < size and (byte_length is None or byte_length > used):
        limit = "the byte limit" if byte_length is None or byte_length > cfg.max_read_bytes else "byte_length"
        text += f"\n[bytes {byte_offset}-{end - 1} of {size} shown ({limit}); read on with byte_offset={end}]"
    return text


def _read(ws: Workspace, cfg: FsConfig, path: str, offset: int, limit: int | None,
          byte_offset: int | None = None, byte_length: int | None = None) -> str:
    """Lines offset.. (or bytes byte_offset..) of a file, read in bounded pieces: memory stays near the output size."""
    fd, st = ws.open_file(path)
    shown = ws.display(path)
    with os.fdopen(fd, "rb", buffering=_CHUNK) as f:
        head = f.read(_BINARY_SNIFF_BYTES)
        if _is_binary(head):
            return f"{shown} is a binary file ({st.st_size} bytes); its content is not shown"
        if byte_offset is not None:
            return _read_bytes(f, cfg, shown, st.st_size, byte_offset, byte_length)
        f.seek(0)
        out = bytearray()
        line_no = 1  # the line the next piece belongs to
        line_start = 0  # len(out) when line line_no began
        position = 0  # byte offset in the file of the next piece
        last = offset - 1  # the last whole line shown
        cut_inside: int | None = None  # the file offset the output stops at, inside line line_no
        cut_before = more = False
        ended_line = True
        while piece := f.readline(_CHUNK):
            if line_no >= offset:
                if limit is not None and line_no >= offset + limit:
                    more = True
                    break
                room = cfg.max_read_bytes - len(out)
                if len(piece) > room:
                    if last < offset:  # the first line shown is itself longer than the limit: show its start
                        out += piece[:room]
                        cut_inside = position + room
                    else:  # stop after the last whole line
                        del out[line_start:]
                        cut_before = True
                    break
                out += piece
            position += len(piece)
            ended_line = piece.endswith(b"\n")
            if ended_line:
                if line_no >= offset:
                    last = line_no
                line_no += 1
                line_start = len(out)
    if not out and not cut_before and cut_inside is None:
        lines = line_no - 1 if ended_line else line_no
        if offset > lines:
            return f"[{shown} has {lines} lines; nothing at offset {offset}]"
    if cut_inside is not None:
        text, used = _decode_whole_chars(bytes(out), at_end=False)
        stop = cut_inside - (len(out) - used)
        return text + (
            f"\n[truncated inside line {line_no}, which is longer than the {cfg.max_read_bytes}-byte limit "
            f"(the file has {st.st_size} bytes): read on with byte_offset={stop} for the rest of line {line_no}, "
            f"or offset={line_no + 1} for the lines after it]"
        )
    text = out.decode("utf-8", "replace")
    if cut_before:
        text += (
            f"\n[truncated: output stops after line {last} at the {cfg.max_read_bytes}-byte limit; "
            f"the file has {st.st_size} bytes; read on with offset={last + 1}]"
        )
    elif more:
        text += f"\n[showing lines {offset}-{last}; more follow: read on with offset={last + 1}]"
    return text


def _entries(dir_fd: int) -> list[tuple[str, bool]]:
    """(name, is_dir) of a directory's entries, sorted; a symlink counts as a file and is never entered."""
    with os.scandir(dir_fd) as it:
        return sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in it)


def _walk(dir_fd: int, prefix: str, recursive: bool, stop: threading.Event | None = None,
          depth: int = 0) -> Iterator[tuple[str, bool, int, str]]:
    """(relative path, is_dir, parent fd, name) below dir_fd, sorted; subdirectories are opened from their parent's fd."""
    try:
        entries = _entries(dir_fd)
    except OSError:
        return  # an unreadable directory does not end the listing
    for name, is_dir in entries:
        if stop is not None and stop.is_set():
            return
        rel = prefix + name
        yield rel, is_dir, dir_fd, name
        if recursive and is_dir and depth < _MAX_DEPTH:
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # vanished, unreadable, or swapped for a symlink: not followed
            try:
                yield from _walk(sub, rel + "/", True, stop, depth + 1)
            finally:
                os.close(sub)


def _list(ws: Workspace, cfg: FsConfig, path: str, pattern: str | None, recursive: bool) -> str:
    dir_fd, name = ws.locate(path)
    try:
        if name is not None:
            if _exists(dir_fd, name):
                raise HandError(f"{path} is a file, not a directory; use fs_read to read it")
            raise HandError(f"{path}: no such directory in the workspace")
        base = ws.display(path)
        prefix = "" if base == "." else base + "/"
        lines: list[str] = []
        for rel, is_dir, _, entry in _walk(dir_fd, prefix, recursive):
            if pattern and not (fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(entry, pattern)):
                continue
            if len(lines) >= cfg.max_list_entries:
                lines.append(f"[listing stopped at {cfg.max_list_entries} entries; narrow it with path or pattern]")
                break
            lines.append(rel + "/" if is_dir else rel)
    finally:
        os.close(dir_fd)
    if not lines:
        return f"[no entries in {path}{' matching ' + pattern if pattern else ''}]"
    return "\n".join(lines)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def compile_pattern(pattern: str, ignore_case: bool):
    """The pattern as an RE2 regex: matching takes time linear in the text, whatever the pattern."""
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        why = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise HandError(
            f"invalid regular expression {pattern[:200]!r}: {why} (fs_grep uses RE2 syntax: Python's re "
            "without backreferences or lookaround)"
        ) from None


def _grep(ws: Workspace, cfg: FsConfig, pattern: str, path: str, glob: str | None, ignore_case: bool,
          stop: threading.Event | None = None) -> str:
    regex = compile_pattern(pattern, ignore_case)
    stop = stop or threading.Event()
    dir_fd, name = ws.locate(path)
    matches: list[str] = []
    try:
        if name is not None:  # one file
            if not _exists(dir_fd, name):
                raise HandError(f"{path}: no such file or directory in the workspace")
            files: Iterator[tuple[str, bool, int, str]] = iter([(ws.display(path), False, dir_fd, name)])
        else:
            base = ws.display(path)
            files = _walk(dir_fd, "" if base == "." else base + "/", True, stop)
        for rel, is_dir, parent, entry in files:
            if is_dir or (glob and not (fnmatch.fnmatch(rel, glob) or fnmatch.fnmatch(entry, glob))):
                continue
            if stop.is_set():
                break
            if not _grep_file(regex, cfg, parent, entry, rel, matches, stop):
                matches.append(f"[stopped at {cfg.max_grep_matches} matches; narrow the pattern, path or glob]")
                return "\n".join(matches)
    finally:
        os.close(dir_fd)
    if stop.is_set():
        raise HandError("fs_grep was stopped at its time limit; narrow the path or glob")
    return "\n".join(matches) if matches else f"[no matches for {pattern[:200]!r}]"


def _grep_file(regex, cfg: FsConfig, dir_fd: int, name: str, rel: str, matches: list[str], stop: threading.Event) -> bool:
    """Append this file's matching lines; False once the match limit is reached. Reads in bounded pieces."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)  # a symlink is skipped, never followed
    except OSError:
        return True  # vanished, unreadable or a symlink: grep what can be read
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > cfg.max_grep_file_bytes:  # e.g. a directory swapped in
        os.close(fd)
        return True
    with os.fdopen(fd, "rb", buffering=_CHUNK) as f:
        try:
            if _is_binary(f.read(_BINARY_SNIFF_BYTES)):
                return True
            f.seek(0)
            number, matched = 1, False
            while piece := f.readline(cfg.max_grep_line_bytes):
                if stop.is_set():
                    return True
                ends = piece.endswith(b"\n")
                line = piece.decode("utf-8", "replace").rstrip("\r\n")
                if not matched and regex.search(line):
                    if len(matches) >= cfg.max_grep_matches:
                        return False
                    if len(line) > cfg.max_grep_line_chars:
                        line = line[: cfg.max_grep_line_chars] + "..."
                    matches.append(f"{rel}:{number}: {line}")
                    matched = True  # a long line searched in pieces is reported once
                if ends:
                    number, matched = number + 1, False
        except OSError:
            pass
    return True


# ---- writing ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(dir_fd: int, name: str, rel: str) -> Iterator[int | None]:
    """Hold an exclusive flock on the file now named name in dir_fd (None if it does not exist yet).

    Writers replace the file (a new inode), so a lock on the old inode guards nothing
    once it has been replaced: after taking the lock, check the name still names the
    locked inode, and start again if not. This is what makes two processes editing the
    same file serialize, and it leaves no lock files in the workspace.
    """
    while True:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            yield None
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HandError(f"{rel[:200]}: the path changed while it was being opened; try again") from None
            if exc.errno == errno.EISDIR:
                raise HandError(f"{rel[:200]} is a directory; refusing to replace it with a file") from None
            raise HandError(f"{rel[:200]}: cannot open ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                yield fd
                return
        finally:
            os.close(fd)  # closing releases the flock


def _replace_atomically(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    """Write data to a temp file beside name, fsync it, rename it over name: readers see old or new, never half."""
    tmp = f".{name[:200]}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)  # make the rename itself durable


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()  # read once: os.umask is process-wide and not thread-safe to probe per call


def _write(ws: Workspace, path: str, content: str) -> str:
    if not ws.parts(path):
        raise HandError("fs_write needs a file path, not the workspace root")
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HandError(f"content is not valid Unicode text (a lone surrogate at character {exc.start})") from None
    if ws.budget is not None:
        ws.check_budget(path, len(data), _existing(ws, path))  # before a parent directory is made for it
    try:
        dir_fd, name = ws.locate(path, make_parents=True)
    except HandError as exc:
        if "is a file, not a directory" in str(exc):
            raise HandError(f"{path}: a parent of this path is a file, not a directory") from None
        raise
    try:
        if name is None:
            raise HandError(f"{path} is a directory; refusing to replace it with a file")
        with _locked(dir_fd, name, path) as fd:
            if fd is not None:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise HandError(f"{path} is not a regular file; refused")
                mode = stat.S_IMODE(st.st_mode)
            else:
                mode = _NEW_FILE_MODE
            _replace_atomically(dir_fd, name, data, mode)
    finally:
        os.close(dir_fd)
    return f"wrote {len(data)} bytes to {path} ({'replaced' if fd is not None else 'created'})"


def _existing(ws: Workspace, path: str) -> os.stat_result | None:
    """The stat of the file path names now, None if there is none (or its parents do not exist yet)."""
    try:
        dir_fd, name = ws.locate(path)
    except HandError:
        return None
    try:
        return None if name is None else os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(dir_fd)


def _edit(ws: Workspace, cfg: FsConfig, path: str, old: str, new: str) -> str:
    if old == "":
        raise HandError("old must not be empty; to create or overwrite a whole file use fs_write")
    if old == new:
        raise HandError("old and new are the same; nothing to change")
    dir_fd, name = ws.locate(path)
    try:
        if name is None:
            raise HandError(f"{path} is a directory, not a file; use fs_list to see what it holds")
        with _locked(dir_fd, name, path) as fd:
            if fd is None:
                raise HandError(f"{path}: no such file in the workspace")
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise HandError(f"{path} is not a regular file (device, socket or pipe); refused")
            if st.st_size > cfg.max_edit_bytes:
                raise HandError(
                    f"{path} has {st.st_size} bytes; fs_edit edits files of at most {cfg.max_edit_bytes} bytes "
                    "(use sandbox tools for larger ones)"
                )
            # Compare before replacing: read the current content under the lock, so an edit that
            # landed while we waited is seen and ours fails instead of silently overwriting it.
            with open(fd, "rb", closefd=False) as f:
                raw = f.read(cfg.max_edit_bytes + 1)
            if len(raw) > cfg.max_edit_bytes:
                raise HandError(f"{path} grew past the fs_edit limit of {cfg.max_edit_bytes} bytes; refused")
            if _is_binary(raw[:_BINARY_SNIFF_BYTES]):
                raise HandError(f"{path} is a binary file; fs_edit only edits text")
            text = raw.decode("utf-8", "surrogateescape")
            count = text.count(old)
            if count == 0:
                raise HandError(f"old text not found in {path}; read the file again and copy the text exactly")
            if count > 1:
                raise HandError(f"old text occurs {count} times in {path}; include more surrounding lines so it is unique")
            data = text.replace(old, new, 1).encode("utf-8", "surrogateescape")
            ws.check_budget(path, len(data), st)
            _replace_atomically(dir_fd, name, data, stat.S_IMODE(st.st_mode))
    finally:
        os.close(dir_fd)
    line = text[: text.index(old)].count("\n") + 1
    return f"edited {path}: replaced 1 occurrence at line {line}"


def _os_errors_told(fn):
    """fn, with an OSError it meets (full disk, permissions, a path changed under it) a HandError the model reads."""

    def run(*args):
        try:
            return fn(*args)
        except OSError as exc:
            raise HandError(f"the file system refused: {exc.strerror or exc}") from None

    return run


class _PathLocks:
    """One asyncio.Lock per workspace path, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, path: str):
        lock, users = self._locks.get(path, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[path] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[path]
            if users == 1:
                del self._locks[path]
            else:
                self._locks[path] = (lock, users - 1)


# ---- the hands -------------------------------------------------------------------------------------------


def make_fs_hands(root: str | os.PathLike | SessionWorkspaces, config: FsConfig = FsConfig()) -> list[Hand]:
    """The five fs hands over the workspace at root, or over each call's session workspace (SessionWorkspaces)."""
    shared = None if isinstance(root, SessionWorkspaces) else Workspace(root)

    async def workspace(ctx: Context) -> Workspace:
        if shared is not None:
            return shared
        return Workspace((await root.provision(ctx)).tree, root.budget)

    locks = _PathLocks()
    cfg = config
    # fs_grep runs on threads of its own, so greps that take long cannot hold the threads list and read use.
    grep_pool = ThreadPoolExecutor(max_workers=cfg.grep_workers, thread_name_prefix="fs-grep")

    @hand(idempotent=True)
    async def fs_list(ctx: Context, path: str = ".", pattern: str | None = None, recursive: bool = False) -> str:
        """List the files and directories under a workspace path (directories end in '/').

        path is relative to the workspace root ("." for the root). pattern is a glob
        (e.g. "*.py", "src/**") matched against each entry's workspace-relative path or
        name; recursive lists the whole tree below path. The listing is cut after a
        bounded number of entries, with a note.
        """
        return await asyncio.to_thread(_os_errors_told(_list), await workspace(ctx), cfg, path, pattern, recursive)

    @hand(idempotent=True, description=(
        "Read a text file in the workspace.\n\n"
        "offset is the first line to return (1-based), limit the number of lines (default: to the end). "
        f"Output is cut at {cfg.max_read_bytes} bytes with a note saying where to read on from. A line longer "
        "than that is read in parts: byte_offset (0-based, in bytes) with byte_length reads any bytes of the "
        "file, whatever its lines. Binary files are reported, not shown."
    ))
    async def fs_read(ctx: Context, path: str, offset: int = 1, limit: int | None = None,
                      byte_offset: int | None = None, byte_length: int | None = None) -> str:
        if offset < 1:
            raise HandError("offset is a 1-based line number; it must be at least 1")
        if limit is not None and limit < 1:
            raise HandError("limit must be at least 1 line")
        if byte_offset is not None and byte_offset < 0:
            raise HandError("byte_offset counts bytes from the start of the file; it must be at least 0")
        if byte_length is not None and byte_length < 1:
            raise HandError("byte_length must be at least 1 byte")
        if byte_length is not None and byte_offset is None:
            byte_offset = 0
        ws = await workspace(ctx)
        return await asyncio.to_thread(_os_errors_told(_read), ws, cfg, path, offset, limit, byte_offset, byte_length)

    @hand(idempotent=True, timeout=cfg.grep_timeout)
    async def fs_grep(ctx: Context, pattern: str, path: str = ".", glob: str | None = None, ignore_case: bool = False) -> str:
        """Search workspace files for a regular expression (RE2 syntax: Python's re without backreferences or lookaround).

        Searches the file at path or every text file below it; glob (e.g. "*.py")
        limits which files. Each match is one line "path:line: text". Matching takes time
        linear in the text, whatever the pattern. The number of matches is bounded; binary
        and very large files are skipped.
        """
        stop = threading.Event()
        ws = await workspace(ctx)
        work = asyncio.get_running_loop().run_in_executor(grep_pool, _os_errors_told(_grep), ws, cfg, pattern, path, glob, ignore_case, stop)
        try:
            return await work
        except asyncio.CancelledError:
            stop.set()  # past its deadline: the search stops at its next line instead of running on
            raise

    @hand
    async def fs_write(ctx: Context, path: str, content: str) -> str:
        """Create or overwrite a file in the workspace with content (UTF-8 text).

        Parent directories are created. The write is atomic: readers see the old
        file or the new one, never half of it; an existing file keeps its mode.
        To change part of a file, prefer fs_edit.
        """
        ws = await workspace(ctx)
        async with locks.hold(str(ws.root / ws.display(path))):
            return await asyncio.to_thread(_os_errors_told(_write), ws, path, content)

    @hand(description=(
        "Replace one exact occurrence of old with new in a workspace file.\n\n"
        "old must appear exactly once (copy it from fs_read, with enough surrounding lines to be unique); "
        "the call fails if it is missing or appears more than once, so two edits of the same text cannot "
        f"silently overwrite each other. Atomic. Files larger than {cfg.max_edit_bytes} bytes are refused."
    ))
    async def fs_edit(ctx: Context, path: str, old: str, new: str) -> str:
        ws = await workspace(ctx)
        async with locks.hold(str(ws.root / ws.display(path))):
            return await asyncio.to_thread(_os_errors_told(_edit), ws, cfg, path, old, new)

    log.debug("fs hands ready", workspace=str(shared.root) if shared else f"per session under {root.root}")
    return [fs_list, fs_read, fs_grep, fs_write, fs_edit]


#: The port `serve hand` listens on when --port is not given.
DEFAULT_PORT = 50071


def HANDS() -> list[Hand]:  # noqa: N802 - the name `brainhands serve hand` looks for
    """The fs hands (and workspace_diff) over each session's workspace under $BRAINHANDS_WORKSPACES when it is
    set, else the fs hands over the one root $BRAINHANDS_WORKSPACE (default: the current directory) for every call."""
    sessions = workspaces_from_env()
    if sessions is not None:
        from hands.builtin.workspace import make_workspace_hands

        return [*make_fs_hands(sessions), *make_workspace_hands(sessions)]
    root = os.environ.get(WORKSPACE_ENV) or os.getcwd()
    try:
        return make_fs_hands(root)
    except ValueError as exc:
        raise ValueError(f"{WORKSPACE_ENV}: {exc}") from None


if __name__ == "__main__":
    from hands.cli import module_main

    raise SystemExit(module_main("hands.builtin.fs"))
