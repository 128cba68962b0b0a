"""Running the console: uvicorn in this process's event loop, on a host:port (port 0 picks a free one)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

import uvicorn

from brainhands.console.app import ConsoleConfig, build_app


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the process that runs the console owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


@dataclass
class ConsoleServer:
    server: uvicorn.Server
    task: asyncio.Task
    address: str  # host:port it listens on

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); ValueError naming what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


async def start_console(config: ConsoleConfig, host: str = "127.0.0.1", port: int = 8080) -> ConsoleServer:
    """Serve the console until stop(); OSError when the address cannot be bound."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    server = _Server(uvicorn.Config(build_app(config), log_level="warning", access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"the console did not start on {host}:{bound}")
        await asyncio.sleep(0.02)
    shown = f"[{host}]" if ":" in host else host
    return ConsoleServer(server, task, f"{shown}:{bound}")
