"""How a sandboxed command is wrapped: bubblewrap when it works here, resource limits alone otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hands.builtin.sandbox.config import SandboxConfig

BUBBLEWRAP = "bubblewrap"
LIMITS_ONLY = "limits-only"
SANDBOX_DIR = "/sandbox"  # where the working directory appears inside bubblewrap
PROGRAM_DIR = "/run/brainhands-program"  # where a run in a session workspace finds its program, read-only

# Files from /etc that programs need to run (dynamic linker, users, locale); nothing else of /etc is shown.
_ETC_FILES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/passwd", "/etc/group",
    "/etc/nsswitch.conf", "/etc/localtime", "/etc/alternatives", "/etc/mime.types",
)
_TOP_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# Runs before the sandboxed program, outside bubblewrap, with a scrubbed environment:
# sets the limits (inherited by everything started below it), drops to the run's uid if
# one is given, then execs. Done here rather than in preexec_fn, which is unsafe in a
# process that has threads (grpc has many).
LAUNCHER = r"""
import os, resource, sys
limits, uid, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
for item in limits.split(","):
    name, value = item.split("=")
    soft, _, hard = value.partition(":")
    resource.setrlimit(getattr(resource, name), (int(soft), int(hard or soft)))
if uid != "-":
    uid = int(uid)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
if argv[0] == "--kill-all":
    # kill(-1) signals every process this uid may signal (all of this uid's), except ourselves.
    for _ in range(3):
        try:
            os.kill(-1, 9)
        except ProcessLookupError:
            break
    sys.exit(0)
os.execv(argv[0], argv)
"""


class IsolationUnavailable(ValueError):
    """The isolation asked for (or bubblewrap, by default) cannot be had here: the sandbox does not start."""


@dataclass(frozen=True)
class Isolation:
    """The isolation in force and how to build a run's command line under it."""

    mode: str
    reason: str  # why this mode (the probe's error when bubblewrap was wanted but failed)
    bwrap: str | None
    python_prefix: str | None  # the interpreter's install dir, bound read-only when not under /usr

    @property
    def description(self) -> str:
        if self.mode == BUBBLEWRAP:
            return ("Isolation: bubblewrap (no network, read-only system directories, only the working "
                    "directory writable, separate process tree) plus resource limits.")
        return ("Isolation: LIMITS ONLY (chosen with BRAINHANDS_SANDBOX_ISOLATION=limits-only; no bubblewrap). The code runs as "
                "an ordinary process: it can reach the network and every service this machine can (Redis, "
                "PostgreSQL, the gateway, other hands on loopback), read every file the service's user can read "
                "(the workspace, home directories, /etc), see other processes in /proc and signal those of its "
                "own user. It cannot read the environment of brainhands services (they are non-dumpable) and "
                "gets a scrubbed environment with no keys; resource limits apply.")

    def wrap(self, argv: list[str], workdir: str, env: dict[str, str], *, scratch: tuple[str, str] | None = None,
             tmpfs_bytes: int = 64 * 1024 * 1024, program: str | None = None) -> tuple[list[str], str]:
        """The command line that runs argv isolated, and the cwd to start it in.

        scratch is (tmp, shm): host directories on the run's size-capped tmpfs to show as /tmp and
        /dev/shm; without it each is a tmpfs of tmpfs_bytes (bwrap's default would be half the RAM).
        program is a host directory of the run's own files, shown read-only at program_dir(program).
        """
        if self.mode != BUBBLEWRAP:
            return argv, workdir
        args = [
            self.bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr",
        ]
        for top in _TOP_DIRS:
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for path in _ETC_FILES:
            args += ["--ro-bind-try", path, path]
        if self.python_prefix:
            args += ["--ro-bind", self.python_prefix, self.python_prefix]
        args += ["--proc", "/proc", "--dev", "/dev"]
        if scratch is not None:
            args += ["--bind", scratch[0], "/tmp", "--bind", scratch[1], "/dev/shm"]
        else:
            args += ["--size", str(tmpfs_bytes), "--tmpfs", "/tmp", "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm"]
        args += [
            # /dev (bwrap's own tmpfs: device nodes are still usable) and the root are read-only, so no
            # file can be made outside the bounded mounts.
            "--remount-ro", "/dev",
            "--bind", workdir, SANDBOX_DIR, "--chdir", SANDBOX_DIR,
            *(("--ro-bind", program, PROGRAM_DIR) if program is not None else ()),
            "--remount-ro", "/",
            "--clearenv",
        ]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return [*args, "--", *argv], workdir

    def program_dir(self, program: str) -> str:
        """Where the run sees the host directory program that holds its own files."""
        return PROGRAM_DIR if self.mode == BUBBLEWRAP else program

    def home(self, workdir: str) -> str:
        return SANDBOX_DIR if self.mode == BUBBLEWRAP else workdir


def _python_prefix(python: str) -> str | None:
    real = Path(os.path.realpath(python))
    if real.is_relative_to("/usr"):
        return None
    return str(real.parent.parent)  # .../bin/python3 -> the install prefix


def launcher_argv(limits: str, uid: int | None, argv: list[str]) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, limits, "-" if uid is None else str(uid), *argv]


def probe(config: SandboxConfig, uid: int | None) -> Isolation:
    """Choose the isolation once, at start-up: run a trivial command the way real runs go."""
    prefix = _python_prefix(config.python)
    if config.isolation == LIMITS_ONLY:
        return Isolation(LIMITS_ONLY, "isolation=limits-only was configured", None, prefix)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        reason = "bwrap is not on PATH (install the bubblewrap package)"
    else:
        candidate = Isolation(BUBBLEWRAP, "bwrap works here", bwrap, prefix)
        try:
            with tempfile.TemporaryDirectory(prefix="brainhands-sandbox-probe-", dir=config.work_root) as workdir:
                if uid is not None:
                    os.chown(workdir, uid, uid)
                argv, _ = candidate.wrap([config.python, "-c", "print('ok')"], workdir, {"PATH": "/usr/bin:/bin"})
                done = subprocess.run(
                    launcher_argv("RLIMIT_NOFILE=256", uid, argv),
                    capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin"}, cwd=workdir,
                )
            if done.returncode == 0 and done.stdout.strip() == "ok":
                return candidate
            reason = f"bwrap probe failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[:300]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"bwrap probe failed: {exc}"
    if config.isolation == BUBBLEWRAP:
        raise IsolationUnavailable(f"sandbox isolation=bubblewrap was required but {reason}")
    # No silent fallback: code without bubblewrap reaches the network, the files and the services of this
    # machine. Running it that way is a choice the operator makes out loud.
    raise IsolationUnavailable(
        f"the sandbox will not start without bubblewrap: {reason}. Install bubblewrap, or accept that code "
        "reaches this machine's network, files and services by starting it with "
        "BRAINHANDS_SANDBOX_ISOLATION=limits-only"
    )
