"""Hands for the quota system tests: a cheap echo, and a slow hand that records its own peak concurrency."""

from __future__ import annotations

import asyncio

from hands import hand

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


HANDS = [echo, slow, peak]
