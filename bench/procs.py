"""Services under test as real processes: brainhands services, nginx, and what they cost in CPU and memory."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from brainhands.procs import free_port, spawn, stop_all, wait_logged

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """A child process of the bench, its log file, and the address it serves."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self, pid: int | None = None) -> float:
        """User + system CPU the process has used so far (from /proc, so it works while it runs)."""
        with open(f"/proc/{pid or self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def tree_cpu_seconds(self) -> float:
        """cpu_seconds() of the process and its running children (a gateway's --workers)."""
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
            children = [int(pid) for pid in f.read().split()]
        return self.cpu_seconds() + sum(self.cpu_seconds(pid) for pid in children)

    def memory(self) -> tuple[int, int]:
        """(resident bytes now, peak resident bytes) from /proc/PID/status."""
        values = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
        return values["VmRSS"], values["VmHWM"]

    def reset_peak(self) -> None:
        """Start a new VmHWM window (Linux: writing 5 to clear_refs resets the peak RSS)."""
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        stop_all([self.proc], grace=10)


@dataclass
class Procs:
    """Every process a benchmark started, stopped together (context manager)."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="brainhands-bench-")))
    started: list[Proc] = field(default_factory=list)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.started):
            p.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, root: Path = ROOT) -> Proc:
        log_path = self.workdir / f"{name}.log"
        # cwd: `python -m` imports from here first, so another checkout runs its own code.
        p = Proc(name, spawn(argv, log_path, env=env, cwd=root), log_path)
        self.started.append(p)
        return p

    def brainhands(self, name: str, args: list[str], ready: str, env: dict[str, str] | None = None,
                   timeout: float = 30.0, module: str = "brainhands", root: Path = ROOT) -> Proc:
        """`python -m brainhands ARGS` (from the checkout at root), ready when it logs `ready` with an address."""
        p = self.spawn(name, [sys.executable, "-m", module, *args], env, root)
        p.address = wait_logged(p.log_path, ready, p.proc, timeout)
        if p.address:
            return p
        raise RuntimeError(f"{name} did not start (log {p.log_path}):\n{p.tail()}")

    def hand(self, name: str = "hand", max_concurrency: int = 4096, root: Path = ROOT) -> Proc:
        spec = "bench.hands:HANDS"
        if root != ROOT:  # a baseline checkout may predate bench/: give it the same hands as a top-level module
            shutil.copy(ROOT / "bench" / "hands.py", root / "bench_hands.py")
            spec = "bench_hands:HANDS"
        return self.brainhands(
            name,
            ["serve", "hand", spec, "--port", "0", "--max-concurrency", str(max_concurrency)],
            "serving hands",
            root=root,
        )

    def gateway(self, name: str, backends: list[str], *, quota_store: str | None = None,
                quotas: list[dict] | None = None, api_key: str = "bench-key", tenant: str = "bench",
                root: Path = ROOT, workers: int = 1, **settings) -> Proc:
        """A gateway routing every hand to backends; with quotas, one tenant (api_key) subject to them; settings
        are more config keys; workers > 1: `--workers N`, ready once every worker serves."""
        config: dict = {
            "listen": "127.0.0.1:0",
            "metrics": None,
            "routes": [{"hands": ["*"], "backends": backends}],
            **settings,
        }
        if quotas is not None:
            config["quota_store"] = quota_store or "memory"
            config["tenants"] = [{"name": tenant, "api_keys": ["env:BENCH_API_KEY"], "allow": ["*"], "quotas": quotas}]
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = ["serve", "gateway", "--config", str(path), *(["--workers", str(workers)] if workers > 1 else [])]
        p = self.brainhands(name, argv, "gateway serving", env={"BENCH_API_KEY": api_key}, root=root)
        deadline = time.monotonic() + 30
        while p.log_path.read_bytes().count(b'"gateway serving"') < workers:
            if time.monotonic() > deadline or p.proc.poll() is not None:
                raise RuntimeError(f"{name}: not every one of {workers} workers started (log {p.log_path}):\n{p.tail()}")
            time.sleep(0.05)
        return p

    def checkout(self, rev: str) -> Path:
        """The tree of git revision rev, extracted into the work dir (read-only use of the repository)."""
        dest = self.workdir / f"checkout-{rev.replace('/', '_')}"
        dest.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return dest

    def floor_proxy(self, backend: str) -> Proc:
        return self.brainhands("floor-proxy", [backend], "serving", module="bench.floor_proxy")

    def nginx(self, backend: str) -> Proc:
        """nginx as a gRPC proxy (grpc_pass) to backend, one worker, an access log line per call like the gateway."""
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
        port = free_port()
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, backend=backend))
        p = self.spawn("nginx", [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")])
        p.address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return p
            if p.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not start:\n{p.tail()}\n{(prefix / 'error.log').read_text(errors='replace')}")


# One process (master_process off: no privilege drop, so it runs unprivileged or as root alike), HTTP/2
# cleartext in front, a keepalive pool of HTTP/2 connections behind, one access-log line per call.
NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    http2_max_concurrent_streams 1024;
    keepalive_requests 1000000;
    upstream hand {{
        server {backend};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://hand;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def h2load_binary() -> str | None:
    return shutil.which("h2load")
