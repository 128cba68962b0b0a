"""Hands for the console's browser tests: one that answers with any text it is given, one that takes its time."""

from __future__ import annotations

import asyncio

from hands import hand


@hand(description="Answer with the text given, as it is.", idempotent=True)
async def echo(text: str) -> str:
    return text


@hand(description="Sleep, then answer.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


HANDS = [echo, slow]
