"""Hands for the quota system tests: a cheap echo, a slow hand that records its own peak concurrency, and a
slow hand that reports LLM tokens spent."""

from __future__ import annotations

import asyncio

from hands import HandResult, Usage, hand

_in_flight = 0
_peak = 0


@hand(description="Echo the text back.")
async def echo(text: str = "") -> str:
    return text


@hand(description="Sleep, counting how many calls run at once.")
async def slow(seconds: float = 0.2) -> str:
    global _in_flight, _peak
    _in_flight += 1
    _peak = max(_peak, _in_flight)
    try:
        await asyncio.sleep(seconds)
    finally:
        _in_flight -= 1
    return "slept"


@hand(description="The most slow calls this process ever ran at once.")
async def peak() -> str:
    return str(_peak)


@hand(description="Take a while, then report the LLM tokens it spent, as a model-calling hand would.")
async def spend(tokens: int = 1000, seconds: float = 1.5) -> HandResult:
    await asyncio.sleep(seconds)
    return HandResult(output="spent", usage=Usage(input_tokens=tokens // 2, output_tokens=tokens - tokens // 2))


HANDS = [echo, slow, peak, spend]
