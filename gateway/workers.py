"""`--workers N`: N gateway processes on one port (SO_REUSEPORT), started and watched by the command's process.

The kernel spreads incoming connections over the workers' listening sockets, so the gateway uses N cores.
Workers share nothing in memory: quotas and registrations hold across them only through shared (Redis) stores,
which is why the command refuses N > 1 otherwise. Used by the gateway's command line only: it forks and exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable

import structlog

from gateway.config import GatewayConfig, split_address
from hands.logs import bind_process

log = structlog.get_logger("gateway.workers")


def why_not_workers(config: GatewayConfig, workers: int) -> str | None:
    """The reason the config cannot run in `workers` processes, or None when it can."""
    if workers <= 1:
        return None
    if config.quota_store == "memory" and any(t.quotas for t in config.tenants.root):
        return (f"--workers {workers} needs a shared quota store: with quota_store: memory each worker would admit "
                "the whole limit; set quota_store: redis://...")  # fmt: skip
    if config.registry == "memory":
        return (f"--workers {workers} needs a shared registry: with registry_store: memory a hand registered with one "
                "worker is unknown to the others; set registry_store (or quota_store) to redis://...")  # fmt: skip
    if config.mcp is not None:
        return f"--workers {workers} cannot serve the MCP front (it needs one port per process); run it in a gateway of its own"
    return None


def reserve_port(host: str) -> socket.socket:
    """A socket bound with SO_REUSEPORT to a free port of host, held so that no other program takes the port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


def worker_configs(config: GatewayConfig, workers: int) -> tuple[list[GatewayConfig], socket.socket | None]:
    """One config per worker: the same port (a free one reserved when it is 0), metrics on port + i, one
    delegation key (a generated key would be each worker's own, and a delegation another worker signed fails)."""
    held = None
    host, port = split_address(config.listen)
    if port == 0:
        held = reserve_port(host)
        port = held.getsockname()[1]
    shared = config.replace(
        listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        delegation_key=config.delegation_key or os.urandom(32),
    )
    out = []
    for i in range(workers):
        metrics = shared.metrics
        if metrics is not None:
            m_host, m_port = split_address(metrics)
            metrics = f"{m_host}:{m_port + i}" if m_port else metrics
        out.append(shared.replace(metrics=metrics))
    return out, held


def run_workers(run: Callable[[int], int], workers: int) -> int:
    """Fork `workers` processes each running run(index); pass SIGTERM/SIGINT on; stop all when one dies."""
    children: dict[int, int] = {}  # pid -> worker index
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            bind_process(worker=index)  # on every line of this worker, the calls' lines included
            code = 1
            try:
                code = run(index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("gateway worker failed", worker=index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index
    stopping = False

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    log.info("gateway workers started", workers=workers, pids=sorted(children))
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        worst = worst or (code if code > 0 else 1 if code else 0)
        if not stopping:
            # A worker that died leaves its share of connections unserved: stop them all and let the supervisor
            # (systemd, Kubernetes) start the gateway again, rather than run on with fewer than asked for.
            log.error("gateway worker exited; stopping the others", worker=index, pid=pid, code=code)
            forward(signal.SIGTERM, None)
            worst = worst or 1
    return worst
