"""A gateway and hand services as real processes on loopback, for the gateway system tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import yaml

from brainhands.procs import spawn, stop_all
from gateway.v1 import gateway_pb2, gateway_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]

#: Short intervals so failures are noticed within a fraction of a second.
FAST = {
    "listen": "127.0.0.1:0",
    "metrics": "127.0.0.1:0",
    "health_check_interval": "200ms",
    "health_check_timeout": "500ms",
    "eject_after_failures": 2,
    "eject_backoff": {"base": "500ms", "max": "2s"},
    "default_lease_ttl": "1500ms",
    "startup_grace": 0,  # an unknown name is NOT_FOUND at once (tests of the grace set their own)
}


class Proc:
    """A child process whose output goes to a file (brainhands.procs.spawn), so a chatty service never blocks."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.log_path = log_path
        log_path.write_bytes(b"")  # a restarted service's ready line is its own, not the last run's
        self.proc = spawn(argv, log_path, env=env, cwd=ROOT)
        self.address = ""
        self.metrics = ""  # the gateway's Prometheus host:port
        self.ready: dict = {}

    def records(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    async def wait_ready(self, event: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("event") == event and record.get("address"):
                    self.ready = record
                    self.address = record["address"]
                    return record
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not log {event!r} within {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def stop(self) -> None:
        stop_all([self.proc], grace=5)


class Stack:
    """Starts processes, remembers them, kills them all on close."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.ledger = tmp_path / "ledger.txt"
        self.ledger.touch()
        self.procs: list[Proc] = []
        self._channels: list[grpc.aio.Channel] = []

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {**os.environ, "BRAINHANDS_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **extra}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, self.tmp / f"{name}.log", self._env(env))
        self.procs.append(proc)
        return proc

    async def gateway(self, name: str = "gateway", **overrides) -> Proc:
        config = {**FAST, **overrides}
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = self._spawn(name, [sys.executable, "-m", "gateway", "--config", str(path)], {})
        record = await proc.wait_ready("gateway serving")
        proc.metrics = record["metrics"]
        return proc

    async def hand(
        self,
        replica: str,
        spec: str = "tests.system.gateway_hands",
        *,
        register: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> Proc:
        argv = [sys.executable, "-m", "brainhands", "serve", "hand", spec, "--host", host, "--port", str(port)]
        if register:
            argv += ["--register", register]
        proc = self._spawn(replica, argv, {"GW_TEST_REPLICA": replica, "GW_TEST_LEDGER": str(self.ledger)})
        await proc.wait_ready("serving hands")
        return proc

    async def brain(self, name: str, *args: str, env: dict[str, str]) -> Proc:
        """`brainhands serve brain --port 0 ARGS...` (the gateway, store and model in args and env)."""
        argv = [sys.executable, "-m", "brainhands", "serve", "brain", "--port", "0", *args]
        proc = self._spawn(name, argv, env)
        await proc.wait_ready("serving brain", timeout=60)
        return proc

    async def flip_backend(self, replica: str) -> Proc:
        argv = [sys.executable, "-m", "tests.system.gateway_flip_backend"]
        proc = self._spawn(replica, argv, {"GW_TEST_REPLICA": replica})
        await proc.wait_ready("serving hands")
        return proc

    def registry(self, gateway: Proc) -> gateway_pb2_grpc.RegistryServiceStub:
        channel = grpc.aio.insecure_channel(gateway.address)
        self._channels.append(channel)
        return gateway_pb2_grpc.RegistryServiceStub(channel)

    async def backends(self, gateway: Proc) -> dict[str, gateway_pb2.Backend]:
        reply = await self.registry(gateway).ListBackends(gateway_pb2.ListBackendsRequest(), timeout=5)
        return {b.address: b for b in reply.backends}

    async def wait_for(self, predicate, what: str, timeout: float = 10.0):
        """Poll an async predicate until it returns something truthy, or fail saying what never happened."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = await predicate()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what} did not happen within {timeout}s")

    def ledger_entries(self) -> list[tuple[str, str]]:
        return [tuple(line.split()) for line in self.ledger.read_text().splitlines() if line.strip()]

    def ledger_counts(self) -> Counter:
        return Counter(call_id for call_id, _ in self.ledger_entries())

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        for proc in self.procs:
            proc.stop()
