"""HandClient: call Execute and Describe on a hand service or a gateway."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from hands import metadata as md
from hands import tracing
from hands.serving import reconnect_options
from hands.v1 import hands_pb2, hands_pb2_grpc


class HandClient:
    """One long-lived channel to a HandService (a hand service or a gateway).

    execute() returns the ExecuteResponse; a non-OK status raises grpc.aio.AioRpcError,
    whose code() is one of the statuses of the design's table.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Mapping[str, str] | None = None,
        max_message_bytes: int = 8 * 1024 * 1024,
        options: Sequence[tuple[str, Any]] = (),
    ):
        self.target = target
        opts = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Retry the connection at least every second while the target is gone: with grpc's default backoff
            # calls kept failing UNAVAILABLE for seconds after a restarted gateway was back.
            *reconnect_options(1000),
            *options,
        ]
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self._stub = hands_pb2_grpc.HandServiceStub(self._channel)
        base = dict(metadata or {})
        if api_key:
            base[md.AUTHORIZATION] = f"Bearer {api_key}"
        self._metadata = tuple(base.items())

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    async def execute(
        self,
        name: str,
        input: str | Mapping[str, Any] = "",
        *,
        call_id: str | None = None,
        session_id: str = "",
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        wait_for_ready: bool | None = None,
    ) -> hands_pb2.ExecuteResponse:
        if not isinstance(input, str):
            input = json.dumps(input)
        call_id = call_id or uuid.uuid4().hex
        meta = [*self._metadata, (md.CALL_ID, call_id)]
        if session_id:
            meta.append((md.SESSION_ID, session_id))
        if metadata:
            meta.extend(metadata.items())
        if tracing.enabled():  # W3C traceparent of the current span: the callee's spans nest under it
            meta.extend(tracing.headers())
        request = hands_pb2.ExecuteRequest(name=name, input=input, call_id=call_id, session_id=session_id)
        return await self._stub.Execute(request, timeout=timeout, metadata=meta, wait_for_ready=wait_for_ready)

    async def describe(self, *, timeout: float | None = None) -> list[hands_pb2.HandSpec]:
        metadata = (*self._metadata, *tracing.headers()) if tracing.enabled() else self._metadata
        response = await self._stub.Describe(hands_pb2.DescribeRequest(), timeout=timeout, metadata=metadata)
        return list(response.hands)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> HandClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
