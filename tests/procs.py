"""Run brainhands services as real processes in tests and learn their bound addresses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from brainhands.procs import ready_record, spawn, stop_all

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServiceProcess:
    """A child process (brainhands.procs.spawn: its output in a file) and the address it logged; the lines
    read so far are kept in .log."""

    proc: subprocess.Popen
    log_file: object = None
    address: str = ""
    log: list[str] = field(default_factory=list)
    _offset: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_log(self, timeout: float = 0.0) -> list[str]:
        """The complete stderr lines written since the last read, waiting up to timeout seconds for one."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_file.name, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1
            if end or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        self._offset += end
        new = chunk[:end].decode(errors="replace").splitlines()
        self.log.extend(new)
        return new

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        stop_all([self.proc], grace=timeout)
        if self.log_file is not None:
            self.log_file.close()
        return self.proc.returncode


def start_service(args: list[str], *, env: dict[str, str] | None = None, ready_event: str = "serving hands",
                  timeout: float = 20.0, cwd: str | os.PathLike | None = None,
                  module: str = "brainhands") -> ServiceProcess:
    """Start `python -m MODULE ARGS...` (brainhands by default) with JSON logs; wait for the log line ready_event
    with an address."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH", "")]))
    log_file = tempfile.NamedTemporaryFile(prefix="brainhands-test-", suffix=".log")  # noqa: SIM115
    proc = spawn([sys.executable, "-m", module, *args], log_file.name, env=full_env, cwd=cwd or ROOT)
    service = ServiceProcess(proc, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in service.read_log(timeout=0.2):
            record = ready_record(line, ready_event)
            if record is not None:
                service.address = record["address"]
                return service
        if proc.poll() is not None:
            service.read_log(timeout=0.5)
            raise RuntimeError(f"{args} exited with {proc.returncode}:\n" + "\n".join(service.log[-30:]))
    service.stop()
    raise RuntimeError(f"{args} did not log {ready_event!r} within {timeout}s:\n" + "\n".join(service.log[-30:]))


async def poll(predicate, what: str, timeout: float = 30.0) -> None:
    """Await predicate() until it is true; fail the test naming `what` after timeout seconds."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
