"""SandboxConfig: the limits every sandboxed run gets, fixed once at start-up."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

ISOLATION_MODES = ("auto", "bubblewrap", "limits-only")
ENV_PREFIX = "BRAINHANDS_SANDBOX_"


def _default_python() -> str:
    # A system interpreter first: it lives under /usr, which the sandbox can see, while a
    # pyenv or venv interpreter may sit in a directory the sandbox user cannot enter.
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("python3") or sys.executable


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation for sandbox_python and sandbox_shell; validated when built."""

    timeout: float = 30.0  # wall-clock seconds when the caller gives none
    max_timeout: float = 300.0  # the most a caller may ask for
    cpu_seconds: int = 60  # RLIMIT_CPU per process
    memory_bytes: int = 1024 * 1024 * 1024  # RLIMIT_AS per process
    max_processes: int = 64  # RLIMIT_NPROC; binds per sandbox user (see uid_base)
    max_file_bytes: int = 64 * 1024 * 1024  # RLIMIT_FSIZE: the largest file a run may write
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_output_bytes: int = 64 * 1024  # stdout+stderr returned; the rest is cut with a marker
    # What one run may store in all: its working directory, /tmp and /dev/shm share one size-capped tmpfs
    # (RAM-backed, freed when the run ends) when the service may mount one, else /tmp and /dev/shm get a
    # tmpfs of this size each under bubblewrap and the working directory has no total bound (Describe says which).
    disk_bytes: int = 512 * 1024 * 1024
    max_files: int = 10_000  # files and directories one run may create (the tmpfs's inode limit)
    max_concurrent: int = 8  # runs at once; more wait for a slot
    isolation: str = "auto"  # auto: bubblewrap when it works, else limits-only
    # When the service runs as root, each concurrent run gets its own unprivileged uid from
    # [uid_base, uid_base + max_concurrent): root ignores RLIMIT_NPROC, can read every
    # process's environment and cannot be cleaned up after by uid; a plain uid fixes all three.
    # Each service instance on a host needs a range of its own (cleanup kills every process of a
    # run's uid): a second instance on a range in use refuses to start, naming the holder.
    uid_base: int = 61000
    # Ranges of max_concurrent uids from uid_base an instance may try, the first free one taken; 1 pins it to uid_base.
    uid_ranges: int = 64
    python: str = field(default_factory=_default_python)
    shell: str = "/bin/sh"
    work_root: str | None = None  # where fresh working directories are made (default: the system temp dir)

    def __post_init__(self) -> None:
        positive = ("timeout", "max_timeout", "cpu_seconds", "memory_bytes", "max_processes",
                    "max_file_bytes", "max_open_files", "max_output_bytes", "max_concurrent", "disk_bytes", "max_files",
                    "uid_ranges")
        for key in positive:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"sandbox config: {key} must be a positive number, not {value!r}")
        if self.timeout > self.max_timeout:
            raise ValueError(f"sandbox config: timeout ({self.timeout}) exceeds max_timeout ({self.max_timeout})")
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"sandbox config: isolation must be one of {', '.join(ISOLATION_MODES)}, not {self.isolation!r}")
        if not isinstance(self.uid_base, int) or self.uid_base < 1000:
            raise ValueError(f"sandbox config: uid_base must be an unprivileged uid (>= 1000), not {self.uid_base!r}")
        if self.max_output_bytes < 256:
            raise ValueError("sandbox config: max_output_bytes must be at least 256")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides) -> SandboxConfig:
        """Build from BRAINHANDS_SANDBOX_<FIELD> variables (e.g. BRAINHANDS_SANDBOX_TIMEOUT=60), then overrides."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            kind = type(getattr(cls(), f.name)) if f.name not in ("work_root",) else str
            try:
                values[f.name] = kind(raw) if kind is not bool else raw.lower() in ("1", "true", "yes")
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
