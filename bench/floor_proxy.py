"""The floor under the gateway: a bare grpc.aio proxy that forwards Execute bytes, with nothing else per call.

`python -m bench.floor_proxy BACKEND` prints {"event": "serving", "address": ...} and serves until killed.
It has no logging, metrics, auth, routing or retries: what it costs per call is grpcio's own
price for a Python proxy, the bound below which the gateway cannot go while it is a grpc.aio server.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc

from hands.serving import KEEPALIVE_OPTIONS

METHOD = "/hands.v1.HandService/Execute"


async def main(backend: str) -> None:
    channel = grpc.aio.insecure_channel(backend, options=KEEPALIVE_OPTIONS)
    forward = channel.unary_unary(METHOD)  # bytes in, bytes out: no (de)serialization

    async def execute(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await forward(raw, timeout=context.time_remaining())

    server = grpc.aio.server(options=KEEPALIVE_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "hands.v1.HandService", {"Execute": grpc.unary_unary_rpc_method_handler(execute)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"event": "serving", "address": f"127.0.0.1:{port}"}), file=sys.stderr, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
