"""Fixtures for the brain's tests: a hand service whose hands record what they saw, a SQLite store, a Brain factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest

from brain import Brain, BrainConfig, open_store
from hands import Context, HandError, HandResult, HandServicer, Usage, hand
from hands import metadata as md
from hands.serving import start_server
from hands.v1 import hands_pb2, hands_pb2_grpc


@dataclass
class Recorder:
    """What the test hands saw: runs per call id, metadata, and the peak number of calls in flight."""

    runs: Counter = field(default_factory=Counter)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    in_flight: int = 0
    peak: int = 0
    gate_at: int = 1  # the gate hand holds each call until this many are in flight (or 5 s pass)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    token_usage: int = 0  # tokens the usage hand reports per call

    def enter(self, ctx: Context) -> None:
        self.runs[ctx.call_id] += 1
        self.metadata[ctx.call_id] = dict(ctx.metadata)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.gate_at:
            self.gate.set()


def make_hands(rec: Recorder):
    @hand(description="Echo the text back.")
    async def echo(text: str, ctx: Context) -> str:
        rec.enter(ctx)
        rec.in_flight -= 1
        return f"echo: {text}"

    @hand(description="Hold the call until enough calls are in flight at once, then answer.")
    async def gate(item: int, ctx: Context) -> str:
        rec.enter(ctx)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rec.gate.wait(), 5)
            await asyncio.sleep(0)  # let the others see the peak before this one leaves
            return f"item {item} done"
        finally:
            rec.in_flight -= 1

    @hand(description="Always fails, the way a hand reports a failure the model should see.")
    async def broken(ctx: Context) -> str:
        rec.enter(ctx)
        rec.in_flight -= 1
        raise HandError("the disk is on fire")

    @hand(description="Never answers in time.")
    async def stuck(ctx: Context) -> str:
        rec.enter(ctx)
        try:
            await asyncio.Event().wait()
        finally:
            rec.in_flight -= 1
        return "never"

    @hand(description="Does work that spends LLM tokens and reports them.")
    async def spender(ctx: Context) -> HandResult:
        rec.enter(ctx)
        rec.in_flight -= 1
        return HandResult("spent", usage=Usage(input_tokens=rec.token_usage, output_tokens=0))

    @hand(description="Hangs the first time a call id is seen; answers when the same call is issued again.", idempotent=True)
    async def hangs_once(ctx: Context) -> str:
        rec.enter(ctx)
        try:
            if rec.runs[ctx.call_id] == 1:
                await asyncio.Event().wait()
            return f"recovered {ctx.call_id}"
        finally:
            rec.in_flight -= 1

    return [echo, gate, broken, stuck, spender, hangs_once]


class StatusHands(HandServicer):
    """A hand service that also answers with the gateway's non-OK statuses, as a gateway would."""

    def __init__(self, hands, expected_key: str | None):
        super().__init__(hands)
        self.expected_key = expected_key

    async def Execute(self, request, context):
        meta = md.as_dict(context.invocation_metadata())
        if self.expected_key and meta.get(md.AUTHORIZATION) != f"Bearer {self.expected_key}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key")
        if request.name == "over_quota":
            context.set_trailing_metadata((("retry-after-ms", "1500"),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "tenant dev: rate 1/s for over_quota")
        if request.name == "no_replica":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no healthy replica")
        return await super().Execute(request, context)


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
async def hands_target(recorder):
    """Address of a real gRPC hand service on a loopback port, serving the recording hands."""
    servicer = StatusHands(make_hands(recorder), expected_key=None)
    running = await _serve(servicer)
    yield f"127.0.0.1:{running.port}"
    await running.server.stop(0)


@pytest.fixture
async def keyed_target(recorder):
    """Like hands_target, but Execute demands `authorization: Bearer right-key`."""
    servicer = StatusHands(make_hands(recorder), expected_key="right-key")
    running = await _serve(servicer)
    yield f"127.0.0.1:{running.port}"
    await running.server.stop(0)


async def _serve(servicer):
    def register(server):
        hands_pb2_grpc.add_HandServiceServicer_to_server(servicer, server)
        return [hands_pb2.DESCRIPTOR.services_by_name["HandService"].full_name]

    return await start_server(register, port=0)


@pytest.fixture
async def store(tmp_path):
    s = await open_store(str(tmp_path / "sessions.db"))
    yield s
    await s.close()


@pytest.fixture
async def make_brain(hands_target, store):
    """`brain = make_brain(model, max_turns=3, ...)`: a Brain on the recording hands and the SQLite store."""
    brains = []

    def _make(model, target=None, api_key=None, events=None, **limits):
        brain = Brain(
            target=target or hands_target,
            model=model,
            store=store,
            config=BrainConfig(**{"call_timeout": 10.0, **limits}),
            api_key=api_key,
            on_event=events.append if events is not None else None,
        )
        brains.append(brain)
        return brain

    yield _make
    for brain in brains:
        await brain.close()
