"""Services as child processes: a free port, a start with the log in a file, the ready line, an ordered stop.

The local stack, the tests and the benchmarks all start services this one way.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller binds it soon after; port 0 is better where it can be used)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so a killed parent leaves no orphans (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(
    argv: list[str],
    log_path: str | os.PathLike,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    own_session: bool = False,
    die_with_parent: bool = False,
) -> subprocess.Popen:
    """Start argv with no stdin, stdout and stderr appended to log_path (a file: a full pipe nobody reads would
    block a service that logs a line per call) and JSON logs.

    own_session puts the child in its own session, so a Ctrl-C at the terminal reaches only us and we
    stop the children in order; die_with_parent sends it SIGTERM when the thread that started it ends
    (Linux ties that to the thread, so only for children started from the main thread).
    """
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            cwd=cwd,
            env={**os.environ, "BRAINHANDS_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=own_session,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )


def ready_record(line: str, event: str) -> dict | None:
    """The JSON log record on line if it is event with an address (how a service says where it listens)."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if record.get("event") == event and record.get("address") else None


def wait_logged(log_path: str | os.PathLike, event: str, proc: subprocess.Popen, timeout: float) -> str:
    """The address the process logs with event, or "" if it exits or timeout seconds pass first."""
    deadline = time.monotonic() + timeout
    offset = 0
    path = Path(log_path)
    while True:
        with contextlib.suppress(OSError), open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
            end = chunk.rfind(b"\n") + 1
            offset += end
            for line in chunk[:end].decode(errors="replace").splitlines():
                record = ready_record(line, event)
                if record is not None:
                    return record["address"]
        if proc.poll() is not None or time.monotonic() >= deadline:
            return ""
        time.sleep(0.05)


def stop_all(procs: Iterable[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM each running process (in the order given), wait up to grace seconds in all, then SIGKILL the rest."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
