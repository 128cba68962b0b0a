"""Hands used by the SDK tests, served in-process or as a real process."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from hands import Context, HandError, HandResult, Usage, hand


@hand(description="Repeat the text back, n times.", idempotent=True)
async def echo(text: str, n: int = 1) -> str:
    return text * n


@hand(description="Sleep for the given seconds, then say done.")
async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@hand(description="Always raises a bug.")
async def buggy(secret: str = "hunter2") -> str:
    raise RuntimeError(f"database password is {secret}")


@hand(description="Fails the way a hand should: the model sees why.")
async def picky(word: str) -> str:
    raise HandError(f"no such word: {word}")


@hand(description="Reports what the call context holds, and some token usage.")
async def whoami(ctx: Context) -> HandResult:
    return HandResult(
        output=f"{ctx.call_id}|{ctx.session_id}|{ctx.depth}",
        usage=Usage(input_tokens=7, output_tokens=3),
    )


@hand(description="Takes many kinds of input.")
async def kinds(
    path: Annotated[str, "a path relative to the workspace"],
    mode: Literal["r", "w"] = "r",
    tags: list[str] | None = None,
    limits: dict[str, int] | None = None,
    ratio: float = 0.5,
    strict: bool = False,
) -> str:
    return "ok"


HANDS = [echo, nap, buggy, picky, whoami, kinds]
