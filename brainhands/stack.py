"""The embedded local stack: a gateway and the built-in hands as child processes on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from brainhands.procs import free_port, spawn, stop_all

#: The built-in hand services and the hand-name globs each serves.
BUILTIN_HANDS = {
    "fs": ("hands.builtin.fs", ["fs_*", "workspace_*"]),  # workspace_* with BRAINHANDS_WORKSPACES
    "sandbox": ("hands.builtin.sandbox", ["sandbox_*"]),
    "llm": ("hands.builtin.llm", ["llm_*"]),
    "memory": ("hands.builtin.memory", ["memory_*"]),
    # Refuses loopback and private addresses unless BRAINHANDS_WEB_ALLOW says otherwise, so the stack's own
    # services (gateway, metrics, hands) are out of its reach.
    "web": ("hands.builtin.web", ["web_*"]),
}


#: What every child gets: what any program needs to run, never a key.
_BASE_VARS = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "PYTHONPATH", "VIRTUAL_ENV",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "LC_", "OTEL_",
    "COVERAGE_", "BRAINHANDS_LOG_FORMAT", "BRAINHANDS_DEDUPE_", "BRAINHANDS_TRACING",
)  # fmt: skip
#: What each service of the stack needs beyond that (a name ending in _ is a prefix). Only the llm and agent
#: hands and the brain see the model key; only the web hands their search providers' keys.
SERVICE_VARS: dict[str, tuple[str, ...]] = {
    "gateway": (),
    "fs": ("BRAINHANDS_WORKSPACE", "BRAINHANDS_WORKSPACES", "BRAINHANDS_WORKSPACE_", "BRAINHANDS_FS_"),
    "sandbox": ("BRAINHANDS_SANDBOX_", "BRAINHANDS_WORKSPACES", "BRAINHANDS_WORKSPACE_"),
    "llm": ("ANTHROPIC_", "BRAINHANDS_WORKER_", "BRAINHANDS_GATEWAY", "BRAINHANDS_MAX_DEPTH"),
    "agent": ("ANTHROPIC_", "BRAINHANDS_AGENT_", "BRAINHANDS_MODEL", "BRAINHANDS_SESSIONS", "BRAINHANDS_GATEWAY",
              "BRAINHANDS_MAX_DEPTH"),
    "memory": ("BRAINHANDS_MEMORY",),
    "web": ("BRAINHANDS_WEB_", "BRAINHANDS_BRAVE_", "BRAINHANDS_TAVILY_", "BRAINHANDS_EXA_", "BRAINHANDS_SEARXNG_",
            "BRAVE_API_KEY", "TAVILY_API_KEY", "EXA_API_KEY"),
    "brain": ("ANTHROPIC_", "BRAINHANDS_MODEL", "BRAINHANDS_SESSIONS", "BRAINHANDS_GATEWAY", "BRAINHANDS_API_KEY"),
}  # fmt: skip


def child_env(service: str, environ: dict[str, str]) -> dict[str, str]:
    """The environment one service of the stack starts with: the base variables and only those it uses.

    So code in a sandbox (or anything else that reads a process's environment) finds no key a service did
    not need, and a service that is not the llm hand never holds the model key.
    """
    wanted = (*_BASE_VARS, *SERVICE_VARS.get(service, ()))

    def keep(name: str) -> bool:
        return any(name == w or (w.endswith("_") and name.startswith(w)) for w in wanted)

    return {name: value for name, value in environ.items() if keep(name)}


class StackError(RuntimeError):
    """A service of the local stack did not come up; the message names it and quotes its last log lines."""


@dataclass
class StackProcess:
    name: str
    address: str
    proc: subprocess.Popen
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalStack:
    """Running services; stop() ends them all (SIGTERM, then SIGKILL after a grace period)."""

    gateway: str
    services: list[StackProcess] = field(default_factory=list)
    workdir: Path | None = None
    api_key: str | None = None
    metrics: str | None = None  # the gateway's Prometheus endpoint, host:port
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def addresses(self) -> dict[str, str]:
        return {s.name: s.address for s in self.services}

    def stop(self, grace: float = 5.0) -> None:
        stop_all([service.proc for service in reversed(self.services)], grace)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> tuple[subprocess.Popen, Path]:
    log_path = log_dir / f"{name}.log"
    # Only what this service uses: the model key reaches the llm hand and no other child.
    proc = spawn([sys.executable, "-m", "brainhands", *args], log_path, env=child_env(name, {**os.environ, **env}),
                 inherit_env=False, own_session=True, die_with_parent=True)  # fmt: skip
    return proc, log_path


async def wait_serving(address: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll grpc.health.v1 Check until SERVING, the process exits, or the timeout passes."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            await asyncio.sleep(0.05)
    return False


async def start_local_stack(
    workspace: str | os.PathLike,
    *,
    hands: tuple[str, ...] = ("fs", "sandbox", "llm", "memory"),
    gateway_config: dict | None = None,
    extra_env: dict[str, str] | None = None,
    log_dir: str | os.PathLike | None = None,
    timeout: float = 30.0,
) -> LocalStack:
    """Start the built-in hands and a gateway routing to them (memory quotas, open to this machine).

    The workspace is the fs hand's root. Logs go to files in log_dir (a temporary
    folder by default) and are quoted when a service fails to start.
    """
    tmp = None
    if log_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="brainhands-stack-")
        log_dir = tmp.name
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    gateway_port = free_port()
    env = {
        "BRAINHANDS_WORKSPACE": os.path.abspath(workspace),
        # Worker hands (llm_worker) reach the other hands through this gateway.
        "BRAINHANDS_GATEWAY": f"127.0.0.1:{gateway_port}",
        **(extra_env or {}),
    }
    stack = LocalStack(gateway="", workdir=log_dir, _tmp=tmp)
    try:
        routes = []
        for name in hands:
            module, globs = BUILTIN_HANDS[name]
            port = free_port()
            proc, log_path = _spawn(name, ["serve", "hand", module, "--port", str(port)], env, log_dir)
            stack.services.append(StackProcess(name, f"127.0.0.1:{port}", proc, log_path))
            routes.append({"hands": globs, "backends": [f"127.0.0.1:{port}"]})
        extra = dict(gateway_config or {})
        config = {
            "listen": f"127.0.0.1:{gateway_port}",
            "metrics": f"127.0.0.1:{free_port()}",
            "quota_store": "memory",
            # The gateway starts with the hands, so it must notice them coming up quickly.
            "health_check_interval": "500ms",
            # Every route is static and the stack waits until the gateway routes each hand before it is used:
            # an unknown name is a mistake at once (NOT_FOUND), not a hand still registering.
            "startup_grace": 0,
            **extra,
            "routes": [*routes, *extra.get("routes", [])],
        }
        stack.metrics = config.get("metrics") or None
        config_path = log_dir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        proc, log_path = _spawn("gateway", ["serve", "gateway", "--config", str(config_path)], env, log_dir)
        gateway = StackProcess("gateway", f"127.0.0.1:{gateway_port}", proc, log_path)
        stack.services.append(gateway)
        # Everything starts at once (each is a Python start-up); then wait until the gateway routes every hand.
        await _wait_all(stack.services, timeout)
        await _wait_routed(gateway, stack.services[:-1], timeout)
        stack.gateway = gateway.address
        return stack
    except BaseException:
        stack.stop(grace=2.0)
        raise


async def _wait_routed(gateway: StackProcess, hand_services: list[StackProcess], timeout: float) -> None:
    """Poll the gateway's Describe until it lists every hand the hand services serve."""
    from hands import HandClient

    expected: set[str] = set()
    for service in hand_services:
        async with HandClient(service.address) as client:
            expected |= {spec.name for spec in await client.describe(timeout=timeout)}
    deadline = time.monotonic() + timeout
    async with HandClient(gateway.address) as client:
        while True:
            routed = {spec.name for spec in await client.describe(timeout=timeout)}
            if expected <= routed:
                return
            if time.monotonic() > deadline or gateway.proc.poll() is not None:
                raise StackError(
                    f"the gateway does not route {sorted(expected - routed)} (log {gateway.log_path}):\n{gateway.tail()}"
                )
            await asyncio.sleep(0.05)


async def start_brain_service(stack: LocalStack, *, sessions: str | None = None, timeout: float = 30.0) -> StackProcess:
    """Add a brain service (BrainService) to a running stack, calling its gateway."""
    port = free_port()
    args = ["serve", "brain", "--port", str(port), "--gateway", stack.gateway]
    if sessions:
        args += ["--sessions", sessions]
    proc, log_path = _spawn("brain", args, {}, Path(stack.workdir))
    brain = StackProcess("brain", f"127.0.0.1:{port}", proc, log_path)
    stack.services.append(brain)
    await _wait_all([brain], timeout)
    return brain


async def _wait_all(services: list[StackProcess], timeout: float) -> None:
    results = await asyncio.gather(*(wait_serving(s.address, timeout, s.proc) for s in services))
    for service, ok in zip(services, results, strict=True):
        if not ok:
            state = f"exited with {service.proc.returncode}" if service.proc.poll() is not None else "is not serving"
            raise StackError(
                f"the {service.name} service {state} (log {service.log_path}):\n{service.tail()}"
            )
