"""The presenting side of delegated identity: a client that calls other hands as the caller of the current call.

The gateway signs a delegation for every call it forwards (``x-brainhands-delegation``; the verifying side is
gateway/delegation.py). A hand that calls other hands for its caller gets a client from ``ctx.client()`` that
presents that delegation instead of an API key, one level deeper, within the call's deadline: the gateway then
applies the original tenant's allow list, quotas and memory, never the hand's own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hands import metadata as md
from hands import tracing
from hands._client import HandClient
from hands.v1 import hands_pb2

if TYPE_CHECKING:
    from hands._hand import Context

#: One channel per gateway address per event loop, shared by every call's client.
_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, HandClient]] = weakref.WeakKeyDictionary()


class NoGateway(RuntimeError):
    """ctx.client() was asked for with no gateway to call (set BRAINHANDS_GATEWAY for the hand service)."""


def _shared(target: str) -> HandClient:
    clients = _channels.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(target)
    if client is None:
        client = clients[target] = HandClient(target)
    return client


class CallerClient(HandClient):
    """Calls hands through the gateway as the caller of the call being served (its delegation, one level deeper).

    A HandClient (anything taking one takes it, the brain loop included) on a channel shared by the process.
    """

    def __init__(self, ctx: Context, target: str):  # no super().__init__(): the channel is the shared one
        self.target = target
        self._ctx = ctx
        self._client = _shared(target)
        self._channel = self._client.channel
        self._stub = self._client._stub

    @property
    def delegation(self) -> str | None:
        return self._ctx.metadata.get(md.DELEGATION)

    def _caller_metadata(self, extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        ctx = self._ctx
        meta: dict[str, str] = {md.DEPTH: str(ctx.depth + 1)}
        for key in (md.TRACEPARENT, md.BUDGET_TOKENS, md.BUDGET_CALLS, md.WORKSPACE, md.WORKER_WORKSPACES):
            if key in ctx.metadata:
                meta[key] = ctx.metadata[key]
        meta.update(extra or {})
        # Traced here: the callee nests under this hand's own span (the caller's traceparent is its parent's).
        # Not traced here: pass the caller's on, so the services past this one still join its trace.
        meta.update(tracing.headers())
        meta.pop(md.AUTHORIZATION, None)  # the caller's identity, not a key of the hand's
        if self.delegation is not None:
            meta[md.DELEGATION] = self.delegation
        return list(meta.items())

    def _timeout(self, timeout: float | None) -> float | None:
        remaining = self._ctx.time_remaining()
        if timeout is None:
            return remaining
        return timeout if remaining is None else min(timeout, remaining)

    async def execute(
        self,
        name: str,
        input: str | Mapping[str, Any] = "",
        *,
        call_id: str | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        wait_for_ready: bool | None = None,
    ) -> hands_pb2.ExecuteResponse:
        if not isinstance(input, str):
            input = json.dumps(input)
        call_id = call_id or uuid.uuid4().hex
        session_id = self._ctx.session_id if session_id is None else session_id
        meta = [*self._caller_metadata(metadata), (md.CALL_ID, call_id)]
        if session_id:
            meta.append((md.SESSION_ID, session_id))
            if self._ctx.session_id and session_id != self._ctx.session_id and not (metadata or {}).get(md.WORKSPACE_PARENT):
                # A session of its own for the callee (a worker's): its workspace branches from this one's.
                meta.append((md.WORKSPACE_PARENT, self._ctx.session_id))
        request = hands_pb2.ExecuteRequest(name=name, input=input, call_id=call_id, session_id=session_id)
        return await self._stub.Execute(
            request, timeout=self._timeout(timeout), metadata=meta, wait_for_ready=wait_for_ready
        )

    async def describe(self, *, timeout: float | None = None) -> list[hands_pb2.HandSpec]:
        response = await self._stub.Describe(
            hands_pb2.DescribeRequest(), timeout=self._timeout(timeout), metadata=self._caller_metadata()
        )
        return list(response.hands)

    async def close(self) -> None:
        """Nothing to close: the channel is shared by every call of this process."""

    async def __aexit__(self, *exc) -> None:
        return None
