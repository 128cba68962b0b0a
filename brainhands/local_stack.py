"""LocalStack: the embedded local stack as an async context manager, for Python callers (no second terminal)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from brainhands import stack as _stack


class LocalStack:
    """A gateway and the built-in hands as child processes on free loopback ports, for the body of an `async with`.

        async with LocalStack(workspace=".") as stack:
            brain = Brain(target=stack.gateway, model=AnthropicModel(), store=store)

    The workspace is the fs hand's root (default: the current directory). The children inherit this process's
    environment (ANTHROPIC_API_KEY for the llm hand's workers included); they are stopped when the block ends,
    however it ends.
    """

    def __init__(
        self,
        workspace: str | os.PathLike = ".",
        *,
        hands: tuple[str, ...] = ("fs", "sandbox", "llm", "memory"),
        gateway_config: dict | None = None,
        extra_env: dict[str, str] | None = None,
        log_dir: str | os.PathLike | None = None,
        timeout: float = 30.0,
    ):
        self.workspace = Path(workspace).resolve()
        self._options = dict(hands=hands, gateway_config=gateway_config, extra_env=extra_env, log_dir=log_dir,
                             timeout=timeout)
        self._running: _stack.LocalStack | None = None

    async def __aenter__(self) -> LocalStack:
        if not self.workspace.is_dir():
            raise _stack.StackError(f"workspace {self.workspace} is not a directory")
        self._running = await _stack.start_local_stack(self.workspace, **self._options)
        return self

    async def __aexit__(self, *exc) -> None:
        running, self._running = self._running, None
        if running is not None:
            # Shielded: a cancelled block still stops every child before it returns.
            await asyncio.shield(asyncio.to_thread(running.stop))

    def _started(self) -> _stack.LocalStack:
        if self._running is None:
            raise RuntimeError("the local stack is not running: use it inside `async with LocalStack(...)`")
        return self._running

    @property
    def gateway(self) -> str:
        """The gateway's address (host:port): the target for Brain and HandClient."""
        return self._started().gateway

    @property
    def addresses(self) -> dict[str, str]:
        """Every service's address by name: fs, sandbox, llm, memory, gateway."""
        return self._started().addresses

    @property
    def log_dir(self) -> Path | None:
        """Where the services' logs are (a temporary folder, removed at the end, unless log_dir was given)."""
        return self._started().workdir
