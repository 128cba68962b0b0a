"""SandboxConfig: the limits every sandboxed run gets, fixed once at start-up."""

from __future__ import annotations

import os
import shutil
import sys

from pydantic import Field, field_validator, model_validator

from hands.config import ConfigModel, Duration, invalid, whole

ISOLATION_MODES = ("auto", "bubblewrap", "limits-only")
ENV_PREFIX = "BRAINHANDS_SANDBOX_"


def _default_python() -> str:
    # A system interpreter first: it lives under /usr, which the sandbox can see, while a
    # pyenv or venv interpreter may sit in a directory the sandbox user cannot enter.
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("python3") or sys.executable


class SandboxConfig(ConfigModel):
    """Limits and isolation for sandbox_python and sandbox_shell; validated when built.

    from_env reads BRAINHANDS_SANDBOX_<FIELD> for every field (e.g. BRAINHANDS_SANDBOX_TIMEOUT=60).
    """

    config_name = "sandbox config"
    env_prefix = ENV_PREFIX

    timeout: Duration = 30.0  # wall-clock seconds when the caller gives none
    max_timeout: Duration = 300.0  # the most a caller may ask for
    cpu_seconds: whole(1) = 60  # RLIMIT_CPU per process
    memory_bytes: whole(1) = 1024 * 1024 * 1024  # RLIMIT_AS per process
    max_processes: whole(1) = 64  # RLIMIT_NPROC; binds per sandbox user (see uid_base)
    max_file_bytes: whole(1) = 64 * 1024 * 1024  # RLIMIT_FSIZE: the largest file a run may write
    max_open_files: whole(1) = 256  # RLIMIT_NOFILE
    max_output_bytes: whole(256) = 64 * 1024  # stdout+stderr returned; the rest is cut with a marker
    # What one run may store in all: its working directory, /tmp and /dev/shm share one size-capped tmpfs
    # (RAM-backed, freed when the run ends) when the service may mount one, else /tmp and /dev/shm get a
    # tmpfs of this size each under bubblewrap and the working directory has no total bound (Describe says which).
    disk_bytes: whole(1) = 512 * 1024 * 1024
    max_files: whole(1) = 10_000  # files and directories one run may create (the tmpfs's inode limit)
    max_concurrent: whole(1) = 8  # runs at once; more wait for a slot
    isolation: str = "auto"  # auto: bubblewrap when it works, else limits-only
    # When the service runs as root, each concurrent run gets its own unprivileged uid from
    # [uid_base, uid_base + max_concurrent): root ignores RLIMIT_NPROC, can read every
    # process's environment and cannot be cleaned up after by uid; a plain uid fixes all three.
    # Each service instance on a host needs a range of its own (cleanup kills every process of a
    # run's uid): a second instance on a range in use refuses to start, naming the holder.
    uid_base: whole(1000) = 61000
    # Ranges of max_concurrent uids from uid_base an instance may try, the first free one taken; 1 pins it to uid_base.
    uid_ranges: whole(1) = 64
    python: str = Field(default_factory=_default_python)
    shell: str = "/bin/sh"
    work_root: str | None = None  # where fresh working directories are made (default: the system temp dir)

    @field_validator("isolation")
    @classmethod
    def _isolation(cls, value: str) -> str:
        if value not in ISOLATION_MODES:
            raise ValueError(f"must be one of {', '.join(ISOLATION_MODES)}, not {value!r}")
        return value

    @model_validator(mode="after")
    def _timeout_within_max(self) -> SandboxConfig:
        if self.timeout > self.max_timeout:
            raise invalid("timeout", f"{self.timeout:g}s exceeds max_timeout ({self.max_timeout:g}s)")
        return self
