"""The load generator: h2load (nghttp2, C) sending gRPC Execute frames, with per-call latencies from its log."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import h2load_binary
from hands.v1 import hands_pb2

EXECUTE_PATH = "/hands.v1.HandService/Execute"


@dataclass(frozen=True)
class Load:
    """What one h2load run measured."""

    concurrency: int
    calls: int
    failed: int
    seconds: float
    p50_us: float
    p99_us: float
    generator_cpu: float  # h2load's CPU seconds / wall seconds (1.0 = one core busy)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


def grpc_frame(name: str, input: dict, call_id: str = "bench") -> bytes:
    """A length-prefixed gRPC message carrying one ExecuteRequest, as h2load sends it as the body."""
    body = hands_pb2.ExecuteRequest(name=name, input=json.dumps(input), call_id=call_id).SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_h2load(address: str, frame: bytes, *, concurrency: int, seconds: float, warmup: float = 0.5,
               api_key: str | None = None, workdir: Path, connections: int = 1) -> Load:
    """Drive address with `concurrency` streams for `seconds`, on one HTTP/2 connection (like one gRPC channel) or
    spread over `connections` (as many callers' channels are, which SO_REUSEPORT spreads over gateway workers)."""
    binary = h2load_binary()
    if binary is None:
        raise RuntimeError("h2load is not installed (Debian: apt-get install nghttp2-client)")
    body = workdir / "request.bin"
    body.write_bytes(frame)
    with tempfile.NamedTemporaryFile(dir=workdir, suffix=".log", delete=False) as f:
        log_path = Path(f.name)
    argv = [
        binary, "-c", str(connections), "-m", str(max(1, concurrency // connections)), "-t", "1",
        "-D", f"{max(1, round(seconds))}s", "--warm-up-time", f"{max(1, round(warmup * 1000))}ms",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"--log-file={log_path}", f"http://{address}{EXECUTE_PATH}",
    ]
    if api_key:
        argv[1:1] = ["-H", f"authorization: Bearer {api_key}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + warmup + 60)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr.strip() or done.stdout[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    latencies, ok, failed, first, last = [], 0, 0, None, None
    for line in log_path.read_text().splitlines():
        start_us, status, elapsed_us = line.split("\t")
        start_us, elapsed_us = int(start_us), int(elapsed_us)
        if status == "200":
            ok += 1
            latencies.append(elapsed_us)
        else:
            failed += 1
        first = start_us if first is None else min(first, start_us)
        last = start_us + elapsed_us if last is None else max(last, start_us + elapsed_us)
    log_path.unlink()
    measured = ((last - first) / 1e6) if ok else seconds
    return Load(
        concurrency=concurrency,
        calls=ok,
        failed=failed,
        seconds=measured,
        p50_us=percentile(latencies, 0.50),
        p99_us=percentile(latencies, 0.99),
        generator_cpu=cpu / wall,
    )
