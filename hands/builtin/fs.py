"""The fs hands: list, read, grep, write and edit files inside one workspace root, never outside it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fnmatch
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from hands import Hand, HandError, hand

log = structlog.get_logger("hands.fs")

WORKSPACE_ENV = "BRAINHANDS_WORKSPACE"
MAX_PATH_BYTES = 4096  # PATH_MAX on Linux
MAX_NAME_BYTES = 255  # NAME_MAX on Linux
_BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class FsConfig:
    """Bounds on what one fs call may read or return, so a huge file cannot flood the model's context."""

    max_read_bytes: int = 256 * 1024
    max_list_entries: int = 1000
    max_grep_matches: int = 200
    max_grep_file_bytes: int = 8 * 1024 * 1024  # larger files are skipped by fs_grep
    max_grep_line_chars: int = 400

    def __post_init__(self) -> None:
        for key in ("max_read_bytes", "max_list_entries", "max_grep_matches", "max_grep_file_bytes", "max_grep_line_chars"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"fs config: {key} must be a positive integer, not {value!r}")


class Workspace:
    """A root directory and the rules that keep every path a hand touches inside it."""

    def __init__(self, root: str | os.PathLike):
        path = Path(root)
        if not path.is_dir():
            raise ValueError(f"workspace root {str(root)!r} is not a directory")
        self.root = Path(os.path.realpath(path))

    def resolve(self, rel: str) -> Path:
        """The real path for a workspace-relative path, or HandError saying why it is refused."""
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
        real = Path(os.path.realpath(self.root.joinpath(*parts)))
        if real != self.root and self.root not in real.parents:
            raise HandError(f"path {rel[:200]!r} refused: it resolves outside the workspace (through a symlink)")
        return real

    def relative(self, real: Path) -> str:
        rel = real.relative_to(self.root).as_posix()
        return rel or "."


# ---- reading ---------------------------------------------------------------------------------------------


def _require_regular(real: Path, rel: str) -> os.stat_result:
    try:
        st = real.stat()
    except FileNotFoundError:
        raise HandError(f"{rel}: no such file in the workspace") from None
    except OSError as exc:
        raise HandError(f"{rel}: cannot stat ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise HandError(f"{rel} is a directory, not a file; use fs_list to see what it holds")
    if not stat.S_ISREG(st.st_mode):
        raise HandError(f"{rel} is not a regular file (device, socket or pipe); refused")
    return st


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head


def _read(ws: Workspace, cfg: FsConfig, path: str, offset: int, limit: int | None) -> str:
    real = ws.resolve(path)
    st = _require_regular(real, path)
    # O_NOFOLLOW and O_NONBLOCK: a symlink or FIFO swapped in after the checks above is refused, not followed or waited on.
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise HandError(f"{path}: cannot open ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise HandError(f"{path} is not a regular file; refused")
        head = f.read(_BINARY_SNIFF_BYTES)
        if _is_binary(head):
            return f"{path} is a binary file ({st.st_size} bytes); its content is not shown"
        f.seek(0)
        out: list[bytes] = []
        size = 0
        line_no = 0
        last = offset - 1
        truncated = False
        more = False
        for line in f:
            line_no += 1
            if line_no < offset:
                continue
            if limit is not None and line_no >= offset + limit:
                more = True
                break
            if size + len(line) > cfg.max_read_bytes:
                truncated = True
                break
            out.append(line)
            size += len(line)
            last = line_no
    text = b"".join(out).decode("utf-8", "replace")
    if line_no < offset and not out:
        return f"[{path} has {line_no} lines; nothing at offset {offset}]"
    if truncated:
        text += (
            f"\n[truncated: output stops after line {last} at the {cfg.max_read_bytes}-byte limit; "
            f"the file has {st.st_size} bytes; read on with offset={last + 1}]"
        )
    elif more:
        text += f"\n[showing lines {offset}-{last}; more follow: read on with offset={last + 1}]"
    return text


def _walk(ws: Workspace, base: Path, recursive: bool) -> Iterator[tuple[Path, bool]]:
    """(path, is_dir) below base, sorted, never following symlinks out of the tree."""
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError as exc:
        raise HandError(f"{ws.relative(base)}: cannot list ({exc.strerror})") from None
    for entry in entries:
        is_dir = entry.is_dir(follow_symlinks=False)
        yield Path(entry.path), is_dir
        if recursive and is_dir:
            with contextlib.suppress(HandError):  # an unreadable subdirectory does not end the listing
                yield from _walk(ws, Path(entry.path), True)


def _list(ws: Workspace, cfg: FsConfig, path: str, pattern: str | None, recursive: bool) -> str:
    base = ws.resolve(path)
    if not base.exists():
        raise HandError(f"{path}: no such directory in the workspace")
    if not base.is_dir():
        raise HandError(f"{path} is a file, not a directory; use fs_read to read it")
    lines: list[str] = []
    for entry, is_dir in _walk(ws, base, recursive):
        rel = ws.relative(entry)
        if pattern and not (fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(entry.name, pattern)):
            continue
        if len(lines) >= cfg.max_list_entries:
            lines.append(f"[listing stopped at {cfg.max_list_entries} entries; narrow it with path or pattern]")
            break
        lines.append(rel + "/" if is_dir else rel)
    if not lines:
        return f"[no entries in {path}{' matching ' + pattern if pattern else ''}]"
    return "\n".join(lines)


def _grep(ws: Workspace, cfg: FsConfig, pattern: str, path: str, glob: str | None, ignore_case: bool) -> str:
    try:
        regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise HandError(f"invalid regular expression {pattern[:200]!r}: {exc}") from None
    base = ws.resolve(path)
    if not base.exists():
        raise HandError(f"{path}: no such file or directory in the workspace")
    files = [base] if base.is_file() else [p for p, is_dir in _walk(ws, base, True) if not is_dir]
    matches: list[str] = []
    for file in files:
        rel = ws.relative(file)
        if glob and not (fnmatch.fnmatch(rel, glob) or fnmatch.fnmatch(file.name, glob)):
            continue
        try:
            st = file.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_size > cfg.max_grep_file_bytes:
                continue
            with open(file, "rb") as f:
                if _is_binary(f.read(_BINARY_SNIFF_BYTES)):
                    continue
                f.seek(0)
                for number, raw in enumerate(f, 1):
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if regex.search(line):
                        if len(matches) >= cfg.max_grep_matches:
                            matches.append(f"[stopped at {cfg.max_grep_matches} matches; narrow the pattern, path or glob]")
                            return "\n".join(matches)
                        if len(line) > cfg.max_grep_line_chars:
                            line = line[: cfg.max_grep_line_chars] + "..."
                        matches.append(f"{rel}:{number}: {line}")
        except OSError:
            continue  # vanished or unreadable: grep what can be read
    return "\n".join(matches) if matches else f"[no matches for {pattern[:200]!r}]"


# ---- writing ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(real: Path) -> Iterator[int | None]:
    """Hold an exclusive flock on the file now at real (None if it does not exist yet).

    Writers replace the file (a new inode), so a lock on the old inode guards nothing
    once it has been replaced: after taking the lock, check the path still names the
    locked inode, and start again if not. This is what makes two processes editing the
    same file serialize, and it leaves no lock files in the workspace.
    """
    while True:
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(real, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                yield fd
                return
        finally:
            os.close(fd)  # closing releases the flock


def _replace_atomically(real: Path, data: bytes, mode: int) -> None:
    """Write data to a temp file beside real, fsync it, rename it over real: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name[:200]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()  # read once: os.umask is process-wide and not thread-safe to probe per call


def _write(ws: Workspace, path: str, content: str) -> str:
    real = ws.resolve(path)
    if real == ws.root:
        raise HandError("fs_write needs a file path, not the workspace root")
    if real.is_dir():
        raise HandError(f"{path} is a directory; refusing to replace it with a file")
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise HandError(f"{path}: a parent of this path is a file, not a directory") from None
    # Creating the parents cannot have left the root (resolve refused '..' and outward symlinks), but check again.
    ws.resolve(path)
    data = content.encode("utf-8")
    with _locked(real) as fd:
        if fd is not None:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise HandError(f"{path} is not a regular file; refused")
            mode = stat.S_IMODE(st.st_mode)
        else:
            mode = _NEW_FILE_MODE
        _replace_atomically(real, data, mode)
    return f"wrote {len(data)} bytes to {path} ({'replaced' if fd is not None else 'created'})"


def _edit(ws: Workspace, path: str, old: str, new: str) -> str:
    if old == "":
        raise HandError("old must not be empty; to create or overwrite a whole file use fs_write")
    if old == new:
        raise HandError("old and new are the same; nothing to change")
    real = ws.resolve(path)
    _require_regular(real, path)
    with _locked(real) as fd:
        if fd is None:
            raise HandError(f"{path}: no such file in the workspace")
        st = os.fstat(fd)
        # Compare before replacing: read the current content under the lock, so an edit that
        # landed while we waited is seen and ours fails instead of silently overwriting it.
        with open(fd, "rb", closefd=False) as f:
            raw = f.read()
        if _is_binary(raw[:_BINARY_SNIFF_BYTES]):
            raise HandError(f"{path} is a binary file; fs_edit only edits text")
        text = raw.decode("utf-8", "surrogateescape")
        count = text.count(old)
        if count == 0:
            raise HandError(f"old text not found in {path}; read the file again and copy the text exactly")
        if count > 1:
            raise HandError(f"old text occurs {count} times in {path}; include more surrounding lines so it is unique")
        updated = text.replace(old, new, 1)
        _replace_atomically(real, updated.encode("utf-8", "surrogateescape"), stat.S_IMODE(st.st_mode))
    line = text[: text.index(old)].count("\n") + 1
    return f"edited {path}: replaced 1 occurrence at line {line}"


class _PathLocks:
    """One asyncio.Lock per real path, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Path, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, path: Path):
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


def make_fs_hands(root: str | os.PathLike, config: FsConfig = FsConfig()) -> list[Hand]:
    """The five fs hands over the workspace at root."""
    ws = Workspace(root)
    locks = _PathLocks()
    cfg = config

    @hand(idempotent=True)
    async def fs_list(path: str = ".", pattern: str | None = None, recursive: bool = False) -> str:
        """List the files and directories under a workspace path (directories end in '/').

        path is relative to the workspace root ("." for the root). pattern is a glob
        (e.g. "*.py", "src/**") matched against each entry's workspace-relative path or
        name; recursive lists the whole tree below path. The listing is cut after a
        bounded number of entries, with a note.
        """
        return await asyncio.to_thread(_list, ws, cfg, path, pattern, recursive)

    @hand(idempotent=True)
    async def fs_read(path: str, offset: int = 1, limit: int | None = None) -> str:
        """Read a text file in the workspace.

        offset is the first line to return (1-based), limit the number of lines
        (default: to the end). Output is cut at a size limit with a note saying which
        offset to read on from. Binary files are reported, not shown.
        """
        if offset < 1:
            raise HandError("offset is a 1-based line number; it must be at least 1")
        if limit is not None and limit < 1:
            raise HandError("limit must be at least 1 line")
        return await asyncio.to_thread(_read, ws, cfg, path, offset, limit)

    @hand(idempotent=True)
    async def fs_grep(pattern: str, path: str = ".", glob: str | None = None, ignore_case: bool = False) -> str:
        """Search workspace files for a regular expression (Python re syntax).

        Searches the file at path or every text file below it; glob (e.g. "*.py")
        limits which files. Each match is one line "path:line: text". The number of
        matches is bounded; binary and very large files are skipped.
        """
        return await asyncio.to_thread(_grep, ws, cfg, pattern, path, glob, ignore_case)

    @hand
    async def fs_write(path: str, content: str) -> str:
        """Create or overwrite a file in the workspace with content (UTF-8 text).

        Parent directories are created. The write is atomic: readers see the old
        file or the new one, never half of it; an existing file keeps its mode.
        To change part of a file, prefer fs_edit.
        """
        real = ws.resolve(path)
        async with locks.hold(real):
            return await asyncio.to_thread(_write, ws, path, content)

    @hand
    async def fs_edit(path: str, old: str, new: str) -> str:
        """Replace one exact occurrence of old with new in a workspace file.

        old must appear exactly once (copy it from fs_read, with enough surrounding
        lines to be unique); the call fails if it is missing or appears more than once,
        so two edits of the same text cannot silently overwrite each other. Atomic.
        """
        real = ws.resolve(path)
        async with locks.hold(real):
            return await asyncio.to_thread(_edit, ws, path, old, new)

    log.debug("fs hands ready", workspace=str(ws.root))
    return [fs_list, fs_read, fs_grep, fs_write, fs_edit]


#: The port `serve hand` listens on when --port is not given.
DEFAULT_PORT = 50071


def HANDS() -> list[Hand]:  # noqa: N802 - the name `brainhands serve hand` looks for
    """The fs hands over $BRAINHANDS_WORKSPACE (default: the current directory)."""
    root = os.environ.get(WORKSPACE_ENV) or os.getcwd()
    try:
        return make_fs_hands(root)
    except ValueError as exc:
        raise ValueError(f"{WORKSPACE_ENV}: {exc}") from None


if __name__ == "__main__":
    from hands.cli import module_main

    raise SystemExit(module_main("hands.builtin.fs"))
