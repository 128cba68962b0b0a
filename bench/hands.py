"""The hands the benchmarks call: an echo that does nothing, and a sleeper that stands in for slow work."""

from __future__ import annotations

import asyncio

from hands import hand


@hand(description="Return the text unchanged.", idempotent=True)
async def echo(text: str) -> str:
    return text


@hand(description="Wait the given milliseconds, then answer; stands in for a slow worker.")
async def sleep_ms(ms: int) -> str:
    await asyncio.sleep(ms / 1000)
    return f"slept {ms} ms"


@hand(description="Wait until cancelled or an hour passes: keeps brain sessions open for memory measurements.")
async def hold() -> str:
    await asyncio.sleep(3600)
    return "held"


HANDS = [echo, sleep_ms, hold]
