"""Run one sandboxed command: fresh working directory, limits, wall-clock timeout, capped output, nothing left behind."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field

import structlog

from hands.builtin.sandbox.config import SandboxConfig
from hands.builtin.sandbox.isolation import BUBBLEWRAP, Isolation, launcher_argv
from hands.builtin.sandbox.watch import BudgetWatch
from hands.disk_budget import DiskBudget, Usage, usage

log = structlog.get_logger("hands.sandbox")

_DRAIN_AFTER_KILL = 5.0  # seconds to collect the last output once every process is dead
_SETTLE_BOUND = 10.0  # seconds to wait for a run's uid to own no process (not even a zombie) before reuse
_PR_SET_CHILD_SUBREAPER = 36
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2
_libc = ctypes.CDLL(None, use_errno=True)
_UID_LOCKS: dict[int, int] = {}  # uid -> the fd of its lock file, held for this process's lifetime


def claim_uids(base: int, count: int, ranges: int = 1) -> list[int]:
    """Claim count uids for this service instance: [base, base + count), else the next free range of count.

    Cleanup kills every process of a run's uid, so two instances sharing a uid would kill each other's
    runs. Each uid has a lock file (flock: the kernel drops it when the holder dies, so a crash leaves
    nothing stale), and a range that some other process runs as counts as taken, lock or not. Up to
    `ranges` ranges are tried; RuntimeError, naming the holder, if none is free.
    """
    lock_dir = "/run/brainhands-sandbox" if os.access("/run", os.W_OK) else os.path.join(
        tempfile.gettempdir(), "brainhands-sandbox-uids")
    os.makedirs(lock_dir, mode=0o755, exist_ok=True)
    why = ""
    for n in range(ranges):
        start = base + n * count
        why = _claim_range(lock_dir, start, count)
        if not why:
            return list(range(start, start + count))
    tried = f"uids {base}-{base + count - 1}" if ranges == 1 else f"{ranges} ranges of {count} uids from {base}"
    raise RuntimeError(
        f"sandbox: no free uid range ({tried}; last: {why}); give each instance on a host its own range with "
        f"BRAINHANDS_SANDBOX_UID_BASE (e.g. {base + ranges * count})"
    )


def _claim_range(lock_dir: str, start: int, count: int) -> str:
    """Lock [start, start + count) for this process; "" on success, else why not (and nothing kept)."""
    uids = range(start, start + count)
    taken: list[int] = []
    for uid in uids:
        if uid in _UID_LOCKS:
            continue  # this process holds it already (another Sandbox in the same process)
        fd = os.open(os.path.join(lock_dir, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            _release(taken)
            return f"uid {uid} is held by another sandbox service, pid {holder}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _UID_LOCKS[uid] = fd
        taken.append(uid)
    owners = _processes_of(set(uids))
    if owners and taken:  # uids this process held before are its own runs' business
        _release(taken)
        uid, pid, name = owners[0]
        return f"uid {uid} is in use by pid {pid} ({name})"
    return ""


def _release(uids: list[int]) -> None:
    for uid in uids:
        os.close(_UID_LOCKS.pop(uid))


def _statuses():
    """(pid, /proc/PID/status as a dict) of every process there is now; one that ends meanwhile is skipped."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                yield entry.name, dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        except OSError:
            continue


def _processes_of(uids: set[int]) -> list[tuple[int, int, str]]:
    """(uid, pid, name) of live (not zombie) processes running as one of uids."""
    found = []
    for pid, status in _statuses():
        uid = int(status.get("Uid", "-1").split()[0])
        if uid in uids and not status.get("State", "").startswith("Z"):
            found.append((uid, int(pid), status.get("Name", "?").strip()))
    return found


def _mount_tmpfs(path: str, size: int, inodes: int) -> None:
    options = f"size={size},nr_inodes={inodes},mode=0711".encode()
    if _libc.mount(b"brainhands-sandbox", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _unmount(path: str) -> None:
    # MNT_DETACH: a process that escaped the kill and still holds a file keeps the mount alive only for itself.
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted
            raise OSError(code, os.strerror(code))


def probe_disk_budget(work_root: str | None) -> str | None:
    """None if this process can give each run a size-capped tmpfs here, else why not."""
    try:
        path = tempfile.mkdtemp(prefix="brainhands-sandbox-probe-", dir=work_root)
    except OSError as exc:
        return f"cannot make a directory in the work root ({exc.strerror})"
    try:
        _mount_tmpfs(path, 1024 * 1024, 64)
        _unmount(path)
        return None
    except OSError as exc:
        return f"mounting a tmpfs failed ({exc.strerror}; it needs root or CAP_SYS_ADMIN)"
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(path)


@dataclass
class _Scratch:
    """Where one run's files live: base holds work (its working directory) and, on a capped tmpfs, tmp and shm.

    With a session workspace (workspace), that is the working directory instead, and the program's own files
    go in base/program, outside it, so they never show in the session's change.
    """

    base: str
    capped: bool
    workspace: str | None = None

    @property
    def work(self) -> str:
        if self.workspace is not None:
            return self.workspace
        return os.path.join(self.base, "work") if self.capped else self.base

    @property
    def program(self) -> str:
        return os.path.join(self.base, "program") if self.workspace is not None else self.work

    @property
    def tmp(self) -> str:
        return os.path.join(self.base, "tmp")

    @property
    def shm(self) -> str:
        return os.path.join(self.base, "shm")


@dataclass(frozen=True)
class RunResult:
    """What a run produced: its (capped) output and how it ended."""

    output: str
    returncode: int | None
    timed_out: bool
    duration: float
    output_bytes: int  # before truncation
    notes: tuple[str, ...] = field(default=())  # limits the run reached that its exit status does not show
    stopped: str = ""  # why the run was stopped before it ended, other than its timeout (its workspace's budget)


class _Capture:
    """Keeps the head and the tail of a stream within a byte budget and counts the rest."""

    def __init__(self, limit: int):
        self.head_limit = limit * 3 // 4
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    def text(self, limit: int) -> str:
        kept = len(self.head) + len(self.tail)
        if self.total <= kept:
            return (self.head + self.tail).decode("utf-8", "replace")
        marker = (
            f"\n[... output truncated: {self.total - kept} bytes omitted; the limit is {limit} bytes "
            f"(first {len(self.head)} and last {len(self.tail)} shown) ...]\n"
        )
        return self.head.decode("utf-8", "replace") + marker + self.tail.decode("utf-8", "replace")


class Sandbox:
    """Runs commands under one isolation and one set of limits; at most max_concurrent at once."""

    def __init__(self, config: SandboxConfig, isolation: Isolation, uids: list[int | None],
                 disk_problem: str | None = "not probed"):
        self.config = config
        self.isolation = isolation
        self.disk_capped = disk_problem is None
        self.disk_problem = disk_problem
        self._slots: asyncio.Queue[int | None] = asyncio.Queue()
        for uid in uids:
            self._slots.put_nowait(uid)
        if any(uid is not None for uid in uids):
            # Processes a run leaves behind are re-parented to us rather than to pid 1, so we can
            # reap their zombies: a zombie still counts against its uid's RLIMIT_NPROC, and the
            # next run on that uid would find fewer processes than promised. pid 1 in a container
            # is often no init at all.
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self._limits = self._limits_with(config.max_file_bytes)

    def _limits_with(self, max_file_bytes: int) -> str:
        config = self.config
        return ",".join(
            f"{name}={value}"
            for name, value in (
                # SIGXCPU at the soft limit says why; SIGKILL a second later if the program ignores it.
                ("RLIMIT_CPU", f"{config.cpu_seconds}:{config.cpu_seconds + 1}"),
                ("RLIMIT_AS", config.memory_bytes),
                ("RLIMIT_NPROC", config.max_processes),
                ("RLIMIT_FSIZE", max_file_bytes),
                ("RLIMIT_NOFILE", config.max_open_files),
                ("RLIMIT_CORE", 0),
            )
        )

    async def run(self, argv: list[str], *, files: dict[str, str], stdin: str | None, timeout: float,
                  workspace: str | None = None, budget: DiskBudget | None = None) -> RunResult:
        """Run argv, files written for it first; an argument naming one of files is given that file's path.

        Without workspace the run has a fresh directory of its own, removed afterwards; with one (a session
        workspace's tree) it runs in that directory, read-write, and what it changes there stays, within budget:
        a run that takes the tree past it is stopped (BudgetWatch), and one that ends past it says so.
        """
        uid = await self._slots.get()
        try:
            scratch = await asyncio.to_thread(self._make_scratch, uid, files, workspace)
            try:
                inside = self.isolation.program_dir(scratch.program) if workspace is not None else None
                argv = [os.path.join(inside, arg) if inside and arg in files else arg for arg in argv]
                return await self._run_in(scratch, uid, argv, stdin, timeout, budget if workspace is not None else None)
            finally:
                await asyncio.to_thread(self._remove_scratch, scratch, uid)
        finally:
            self._slots.put_nowait(uid)

    def _make_scratch(self, uid: int | None, files: dict[str, str], workspace: str | None = None) -> _Scratch:
        base = tempfile.mkdtemp(prefix="brainhands-sandbox-", dir=self.config.work_root)
        scratch = _Scratch(base, self.disk_capped, workspace)
        try:
            if scratch.capped:
                # One tmpfs for everything the run can write: its size is the run's whole disk budget,
                # its inode count the file limit, and it is RAM the kernel frees at unmount.
                _mount_tmpfs(scratch.base, self.config.disk_bytes, self.config.max_files)
                for path in (scratch.work, scratch.tmp, scratch.shm) if workspace is None else (scratch.tmp, scratch.shm):
                    os.mkdir(path, 0o700)
                    if uid is not None:
                        os.chown(path, uid, uid)
            if workspace is not None:
                os.mkdir(scratch.program, 0o700)
                if uid is not None:
                    os.chown(scratch.program, uid, uid)
                    _chown_tree(workspace, uid)  # the run's own uid writes the session's files, and only while it runs
            for name, content in files.items():
                path = os.path.join(scratch.program, name)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(content)
                if uid is not None:
                    os.chown(path, uid, uid)
            if uid is not None:
                os.chown(scratch.work, uid, uid)
        except BaseException:
            self._remove_scratch(scratch, uid)
            raise
        return scratch

    def _remove_scratch(self, scratch: _Scratch, uid: int | None = None) -> None:
        if scratch.workspace is not None and uid is not None:
            # Back to the service's own uid: the next run of this uid may be another session's.
            _chown_tree(scratch.workspace, os.geteuid(), os.getegid())
        if scratch.capped:
            with contextlib.suppress(OSError):
                _unmount(scratch.base)
        shutil.rmtree(scratch.base, ignore_errors=True)

    def _budget_notes(self, scratch: _Scratch) -> tuple[str, ...]:
        """What the run's files reached of the disk budget and the file limit, read before the tmpfs goes."""
        if not scratch.capped:
            return ()
        try:
            st = os.statvfs(scratch.base)
        except OSError:
            return ()
        notes = []
        if st.f_bavail * st.f_frsize < 64 * 1024:
            notes.append(f"the disk budget of {self.config.disk_bytes // (1024 * 1024)} MiB (working directory, /tmp "
                         "and /dev/shm together) was reached: writes past it failed with 'No space left on device'")
        if st.f_favail == 0:
            notes.append(f"the limit of {self.config.max_files} files and directories was reached")
        return tuple(notes)

    def _env(self, scratch: _Scratch) -> dict[str, str]:
        # An allow-list, not a deny-list: nothing of the service's own environment (API keys) passes.
        if self.isolation.mode == BUBBLEWRAP:
            tmp = "/tmp"
        else:
            tmp = scratch.tmp if scratch.capped else scratch.base
        # In a session workspace HOME is the scratch space: caches a program keeps there are not the session's change.
        home = tmp if scratch.workspace is not None else self.isolation.home(scratch.work)
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": home,
            "TMPDIR": tmp,
        }

    async def _run_in(self, scratch: _Scratch, uid: int | None, argv: list[str], stdin: str | None,
                      timeout: float, budget: DiskBudget | None = None) -> RunResult:
        env = self._env(scratch)
        limits, start = self._limits, None
        if budget is not None:
            start = await asyncio.to_thread(budget.measure, scratch.work)
            if start.partial:  # far over already (a source larger than the budget): what it holds is what it may keep
                start = await asyncio.to_thread(usage, scratch.work)
            # No one file may be larger than the whole budget: a lone writer stops there without waiting for the watch.
            limits = self._limits_with(min(self.config.max_file_bytes, budget.max_bytes))
        wrapped, cwd = self.isolation.wrap(
            argv, scratch.work, env, scratch=(scratch.tmp, scratch.shm) if scratch.capped else None,
            tmpfs_bytes=self.config.disk_bytes, program=scratch.program if scratch.workspace is not None else None,
        )
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *launcher_argv(limits, uid, wrapped),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,  # the launcher and bwrap get the scrubbed environment too: /proc/1/environ shows nothing
            cwd=cwd,
            start_new_session=True,  # its own process group, so the timeout can kill all of it
        )
        capture = _Capture(self.config.max_output_bytes)
        reader = asyncio.create_task(_read_all(proc.stdout, capture))
        feeder = asyncio.create_task(_feed(proc.stdin, stdin)) if stdin is not None else None
        timed_out = False
        watch = BudgetWatch(scratch.work, budget, start, proc.pid) if budget is not None else None
        if watch is not None:
            watch.start()
        try:
            async with asyncio.timeout(timeout):
                await _exited(proc)
        except TimeoutError:
            timed_out = True
        finally:
            # Also after a normal exit: background processes it started must not outlive the call.
            await self._kill_everything(proc, uid)
            if watch is not None:
                await asyncio.to_thread(watch.stop)
            if feeder is not None:
                feeder.cancel()
            try:
                await asyncio.wait_for(reader, _DRAIN_AFTER_KILL)
            except TimeoutError:
                pass  # a process that escaped the kill holds the pipe: return what was read
        notes = await asyncio.to_thread(self._budget_notes, scratch)
        stopped = ""
        if watch is not None:
            # Measured once nothing of the run is left: a run that ended between two walks may still be past it.
            now = await asyncio.to_thread(watch.budget.measure, scratch.work)
            stopped, over = _over_budget(watch, now)
            notes += over
        return RunResult(
            output=capture.text(self.config.max_output_bytes),
            returncode=None if timed_out else proc.returncode,
            timed_out=timed_out and not stopped,
            duration=time.monotonic() - started,
            output_bytes=capture.total,
            notes=notes,
            stopped=stopped,
        )

    async def _kill_everything(self, proc: asyncio.subprocess.Process, uid: int | None) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if uid is not None:
            # A process that called setsid() left the group; every process of the run's own uid
            # is still found by kill(-1) made as that uid (the kernel holds the task list while
            # it signals, so a fork bomb cannot outrun it).
            killer = await asyncio.create_subprocess_exec(
                *launcher_argv("RLIMIT_CORE=0", uid, ["--kill-all"]),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, env={}, cwd="/",
            )
            try:
                await asyncio.wait_for(killer.wait(), 10)
            except TimeoutError:
                killer.kill()
        if proc.returncode is None:
            # os.kill, not proc.kill(): Popen.kill() polls first, and that waitpid reaps an exited process
            # before asyncio's child watcher does, which then reports exit status 255 for a run that succeeded.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        try:
            # wait() also waits for the pipes to close, which they do once every process holding them is dead.
            await asyncio.wait_for(proc.wait(), _DRAIN_AFTER_KILL)
        except TimeoutError:
            log.warning("sandbox output pipe still open after kill", pid=proc.pid)
        if uid is not None and not await asyncio.to_thread(_settle, uid):
            log.warning("sandbox uid still owns processes after the run", uid=uid)


def _over_budget(watch: BudgetWatch, now: Usage) -> tuple[str, tuple[str, ...]]:
    """(why the run was stopped or "", notes) for a run in a budgeted workspace that now holds now."""
    after = (f"Nothing was deleted: it holds {now.words()} now; until files are removed, fs writes are refused and "
             "sandbox runs may not make it bigger")
    if watch.over is not None:
        return (f"stopped: the run took the session's workspace past {watch.budget.words()}: it held "
                f"{watch.over.words()}, so its processes were killed. {after}"), ()
    if watch.budget.exceeded(now):
        return "", (f"the session's workspace is past {watch.budget.words()}. {after}",)
    return "", ()


def _chown_tree(top: str, uid: int, gid: int | None = None) -> None:
    """Give top and everything below it to uid, never following a symlink (the run may have left any)."""
    gid = uid if gid is None else gid
    os.chown(top, uid, gid, follow_symlinks=False)
    for parent, dirs, names in os.walk(top):
        for name in dirs + names:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


def _settle(uid: int) -> bool:
    """Reap our zombie children owned by uid until uid owns no process but other processes' zombies; False if that
    takes too long."""
    deadline = time.monotonic() + _SETTLE_BOUND
    me = str(os.getpid())
    while True:
        remaining = 0
        for pid, status in _statuses():
            if int(status.get("Uid", "-1").split()[0]) != uid:
                continue
            if status.get("State", "").startswith("Z"):
                if status.get("PPid") != me:
                    # Another process's zombie (a service that ran this uid before us, in a process that never
                    # reaps it): waiting here cannot end it, so it is not waited for.
                    continue
                # Only uid's orphans can be our zombie children here: the run's own process was awaited already.
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(pid), os.WNOHANG)
            remaining += 1
        if remaining == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Return when the process itself exits.

    Process.wait() would also wait until its pipes close, and a background process that
    inherited stdout keeps them open: the run would look hung until the timeout.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return  # already exited and reaped
    except (AttributeError, OSError):  # no pidfd (old kernel): poll the status asyncio records
        while proc.returncode is None:
            await asyncio.sleep(0.02)
        return
    if proc.returncode is not None:
        os.close(pidfd)
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def _read_all(stream: asyncio.StreamReader, capture: _Capture) -> None:
    while chunk := await stream.read(65536):
        capture.add(chunk)


async def _feed(stream: asyncio.StreamWriter, data: str) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stream.write(data.encode("utf-8"))
        await stream.drain()
        stream.close()
