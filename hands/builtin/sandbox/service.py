"""The sandbox hands, sandbox_python and sandbox_shell, and the service that runs them."""

from __future__ import annotations

import os
import signal

import structlog

from hands import Context, Hand, HandError, HandResult, hand
from hands.builtin.sandbox.config import SandboxConfig
from hands.builtin.sandbox.isolation import BUBBLEWRAP, probe
from hands.builtin.sandbox.runner import RunResult, Sandbox, claim_uids, probe_disk_budget
from hands.builtin.sandbox.watch import WALK_EVERY
from hands.disk_budget import size_words
from hands.serving import set_not_dumpable
from hands.workspaces import SessionWorkspaces, workspaces_from_env

log = structlog.get_logger("hands.sandbox")

_DEADLINE_MARGIN = 1.0  # seconds kept back from the caller's deadline to return the partial output


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _why(sig: int, config: SandboxConfig) -> str:
    return {
        signal.SIGXCPU: f" (the CPU limit of {config.cpu_seconds}s was reached)",
        signal.SIGXFSZ: f" (the file size limit of {config.max_file_bytes} bytes was reached)",
        # Not the memory limit (RLIMIT_AS shows as MemoryError or SIGSEGV) and not this run's timeout (said
        # above): the CPU limit's hard stop, or a signal from outside the run, e.g. the kernel's OOM killer.
        signal.SIGKILL: (f" from outside the run's own limits: the CPU limit's hard stop at {config.cpu_seconds + 1}s "
                         "if the program ignored SIGXCPU, else another process or the kernel's out-of-memory killer"),
        signal.SIGSEGV: " (often memory exhaustion under the memory limit)",
    }.get(sig, "")


def _render(result: RunResult, timeout: float, config: SandboxConfig) -> HandResult:
    out = result.output
    for note in result.notes:
        out += ("" if out == "" or out.endswith("\n") else "\n") + f"[{note}]"
    sep = "" if out == "" or out.endswith("\n") else "\n"
    if result.stopped:
        return HandResult(out + sep + f"[{result.stopped}]", is_error=True)
    if result.timed_out:
        note = f"[killed at the {timeout:g}s timeout; the output up to then is above]"
        return HandResult(out + sep + note, is_error=True)
    code = result.returncode
    if code == 0:
        return HandResult(out if out else "[no output; exit status 0]", is_error=bool(result.notes))
    if code is not None and code < 0:
        note = f"[killed by {_signal_name(-code)}{_why(-code, config)}]"
    elif code is not None and code > 128 and code - 128 < 65:
        # Shells and bubblewrap report a child killed by signal N as exit status 128+N.
        note = f"[exit status {code}: killed by {_signal_name(code - 128)}{_why(code - 128, config)}]"
    else:
        note = f"[exit status {code}]"
    return HandResult(out + sep + note, is_error=True)


def _others_may_enter(root) -> str | None:
    """None if a process of another uid may pass through every directory down to root, else the one it may not."""
    path = root
    while True:
        if not os.stat(path).st_mode & 0o001:
            return str(path)
        if path.parent == path:
            return None
        path = path.parent


def make_sandbox_hands(config: SandboxConfig = SandboxConfig(), workspaces: SessionWorkspaces | None = None) -> list[Hand]:
    """sandbox_python and sandbox_shell under config; probes bubblewrap once, here.

    With workspaces each run happens in its session's workspace (made on the session's first call), which it may
    change; without, in a fresh empty directory removed afterwards.
    """
    as_root = os.geteuid() == 0
    if workspaces is not None and as_root and (closed := _others_may_enter(workspaces.root)):
        # Each run has a uid of its own, which must reach the session's tree to work in it.
        raise ValueError(f"workspaces root {workspaces.root}: the sandbox's run uids cannot enter {closed} "
                         "(give it o+x, e.g. chmod 711)")
    # Claimed before the probe runs as uids[0]: RuntimeError (one line at start-up) if another instance has them.
    uids = (claim_uids(config.uid_base, config.max_concurrent, config.uid_ranges) if as_root
            else [None] * config.max_concurrent)
    isolation = probe(config, uids[0])
    disk_problem = probe_disk_budget(config.work_root)
    limits = {
        "timeout_s": config.timeout, "max_timeout_s": config.max_timeout, "cpu_s": config.cpu_seconds,
        "memory_bytes": config.memory_bytes, "max_processes": config.max_processes,
        "max_file_bytes": config.max_file_bytes, "max_output_bytes": config.max_output_bytes,
        "disk_bytes": config.disk_bytes, "max_files": config.max_files,
        "disk_budget": "tmpfs" if disk_problem is None else f"none: {disk_problem}",
        "uids": f"{uids[0]}-{uids[-1]}" if as_root else "the service's own",
        **({"workspace_max_bytes": workspaces.budget.max_bytes, "workspace_max_files": workspaces.budget.max_files}
           if workspaces is not None else {}),
    }
    if isolation.mode == BUBBLEWRAP:
        log.info("sandbox isolation", isolation=isolation.mode, per_run_uid=as_root, **limits)
    else:
        log.warning("sandbox isolation", isolation=isolation.mode, reason=isolation.reason, per_run_uid=as_root,
                    code_can_reach=isolation.description, **limits)
        set_not_dumpable()  # before any run: code of our own uid must not read our environment
    sandbox = Sandbox(config, isolation, uids, disk_problem)
    # The limits runs get, as Describe and the results state them: in a workspace no file may outgrow its budget.
    shown = config if workspaces is None else config.replace(
        max_file_bytes=min(config.max_file_bytes, workspaces.budget.max_bytes))
    mib = config.disk_bytes // (1024 * 1024)
    if workspaces is not None:
        # The workspace outlives the run, so it cannot be on the run's tmpfs: only the scratch space is bounded.
        bound = (f"/tmp and /dev/shm share one size-capped tmpfs of {mib} MiB" if disk_problem is None
                 else f"/tmp and /dev/shm are tmpfs mounts of {mib} MiB each" if isolation.mode == BUBBLEWRAP
                 else f"no bound on the scratch space ({disk_problem})")
        bound_of = workspaces.budget
        disk = (f"Disk: {bound}; the session's workspace may hold at most {size_words(bound_of.max_bytes)} in "
                f"{bound_of.max_files} files and directories. A run that takes it past that is "
                f"stopped (the workspace is measured every {WALK_EVERY:g}s and at once when the disk fills fast, so a "
                "fast writer may get a little past it first) and the result is an error; nothing it wrote is deleted, "
                "and while the workspace is over, fs writes are refused and runs may not make it bigger: remove files "
                "(rm) to go on.")
    elif disk_problem is None:
        disk = (f"Disk: the working directory, /tmp and /dev/shm share one size-capped tmpfs of {mib} MiB "
                f"(RAM-backed, freed when the run ends) holding at most {config.max_files} files.")
    elif isolation.mode == BUBBLEWRAP:
        disk = (f"Disk: /tmp and /dev/shm are tmpfs mounts of {mib} MiB each; the working directory is on the "
                f"host's disk with no total bound ({disk_problem}).")
    else:
        disk = f"Disk: no total bound on what a run writes ({disk_problem})."
    where = ("It runs in the session's workspace (the files the fs hands show), read-write: what it changes "
             "there stays, and the session's later calls see it," if workspaces is not None else
             "It runs in a fresh, empty working directory that is deleted afterwards,")
    common = (
        f"{where} with no secrets in its "
        f"environment. Limits: wall clock {config.timeout:g}s by default (timeout, at most {config.max_timeout:g}s; "
        f"on timeout the process is killed and its output so far returned as an error), {config.cpu_seconds}s CPU, "
        f"{config.memory_bytes // (1024 * 1024)} MiB memory, {config.max_processes} processes, files up to "
        f"{size_words(shown.max_file_bytes)}; stdout and stderr are merged and cut at "
        f"{config.max_output_bytes} bytes. A non-zero exit status is an error. {disk} {isolation.description}"
    )

    def budget(timeout: float | None, ctx: Context) -> float:
        wanted = config.timeout if timeout is None else timeout
        if wanted <= 0 or wanted > config.max_timeout:
            raise HandError(f"timeout must be more than 0 and at most {config.max_timeout:g} seconds")
        remaining = ctx.time_remaining()
        if remaining is not None:
            wanted = min(wanted, max(0.1, remaining - _DEADLINE_MARGIN))
        return wanted

    budget_of_workspaces = None if workspaces is None else workspaces.budget

    async def workspace(ctx: Context) -> str | None:
        return None if workspaces is None else str((await workspaces.provision(ctx)).tree)

    # The hand's own limit stays above max_timeout: the sandbox's timeout must fire first so the partial output returns.
    @hand(description=f"Run a Python 3 program (code) and return its output; stdin is optional input. {common}",
          timeout=config.max_timeout + 30)
    async def sandbox_python(ctx: Context, code: str, timeout: float | None = None, stdin: str | None = None) -> HandResult:
        limit = budget(timeout, ctx)
        result = await sandbox.run([config.python, "-u", "main.py"], files={"main.py": code}, stdin=stdin, timeout=limit,
                                   workspace=await workspace(ctx), budget=budget_of_workspaces)
        return _render(result, limit, shown)

    @hand(description=f"Run a shell command line with {config.shell} -c and return its output. {common}",
          timeout=config.max_timeout + 30)
    async def sandbox_shell(ctx: Context, command: str, timeout: float | None = None) -> HandResult:
        limit = budget(timeout, ctx)
        result = await sandbox.run([config.shell, "-c", command], files={}, stdin=None, timeout=limit,
                                   workspace=await workspace(ctx), budget=budget_of_workspaces)
        return _render(result, limit, shown)

    return [sandbox_python, sandbox_shell]


#: The port `serve hand` listens on when --port is not given.
DEFAULT_PORT = 50072


def HANDS() -> list[Hand]:  # noqa: N802 - the name `brainhands serve hand` looks for
    """The sandbox hands, configured from BRAINHANDS_SANDBOX_* variables, in session workspaces when
    BRAINHANDS_WORKSPACES is set."""
    return make_sandbox_hands(SandboxConfig.from_env(), workspaces_from_env())
