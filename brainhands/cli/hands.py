"""`brainhands hands list|call`: the hands a gateway or hand service offers, and one call to one of them, at a shell."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import grpc

from hands.cli import CliError

DEFAULT_TARGET = "127.0.0.1:50051"


def register(commands) -> None:
    h = commands.add_parser("hands", help="list or call hands on a gateway or hand service")
    hc = h.add_subparsers(dest="hands_command", metavar="ACTION")
    h.set_defaults(func=lambda args: h.print_help() or 2)
    lst = hc.add_parser("list", help="list the hands the target serves")
    call = hc.add_parser("call", help="call one hand and print its output")
    call.add_argument("name", help="the hand's name, as `brainhands hands list` shows it")
    call.add_argument("input", nargs="?", default="{}", help="JSON input object; '-' reads standard input")
    call.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                      help="seconds the call may take before it is given up (default 60)")
    for sp in (lst, call):
        sp.add_argument("--target", default=None, help=f"gateway or hand service (default $BRAINHANDS_GATEWAY or {DEFAULT_TARGET})")
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
    lst.set_defaults(func=_list)
    call.set_defaults(func=_call)


def _target(args) -> str:
    return args.target or os.environ.get("BRAINHANDS_GATEWAY") or DEFAULT_TARGET


def _client(args):
    from hands import HandClient

    return HandClient(_target(args), api_key=os.environ.get("BRAINHANDS_API_KEY") or None)


#: Words grpc puts in UNAVAILABLE when no connection was made (the service itself never answered).
_NO_CONNECTION = ("failed to connect", "connection refused", "dns resolution failed", "connect failed",
                  "no route to host", "socket closed", "connections to all backends failing", "deadline")


def _answered(exc: grpc.aio.AioRpcError) -> bool:
    details = (exc.details() or "").lower()
    return not any(words in details for words in _NO_CONNECTION)


def _explain(exc: grpc.aio.AioRpcError, target: str) -> CliError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE and not _answered(exc):
        return CliError(f"cannot reach {target} ({exc.details()}); is the gateway or hand service running there?")
    if code == grpc.StatusCode.UNAVAILABLE:  # it answered: its own words say what is down (the quota store, a hand)
        return CliError(f"{target} is up but cannot serve the call: {exc.details()}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return CliError(f"{target} refused the credentials ({exc.details()}); set BRAINHANDS_API_KEY to a valid key")
    return CliError(f"{code.name}: {exc.details()}")


def _list(args) -> int:
    async def go():
        async with _client(args) as client:
            return await client.describe(timeout=10)

    try:
        specs = asyncio.run(go())
    except grpc.aio.AioRpcError as exc:
        raise _explain(exc, _target(args)) from None
    if args.json:
        print(json.dumps([
            {"name": s.name, "description": s.description, "input_schema": json.loads(s.input_schema_json or "{}"), "idempotent": s.idempotent}
            for s in specs
        ], indent=2))
        return 0
    width = max((len(s.name) for s in specs), default=4)
    for s in specs:
        first = (s.description.strip().splitlines() or [""])[0]
        print(f"{s.name:<{width}}  {first}")
    if not specs:
        print("(no hands)", file=sys.stderr)
    return 0


def _call(args) -> int:
    raw = sys.stdin.read() if args.input == "-" else args.input

    async def go():
        async with _client(args) as client:
            return await client.execute(args.name, raw, timeout=args.timeout)

    try:
        result = asyncio.run(go())
    except grpc.aio.AioRpcError as exc:
        raise _explain(exc, _target(args)) from None
    if args.json:
        print(json.dumps({
            "output": result.output,
            "is_error": result.is_error,
            "usage": {"input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens},
        }))
    else:
        stream = sys.stderr if result.is_error else sys.stdout
        print(result.output, file=stream)
    return 1 if result.is_error else 0
