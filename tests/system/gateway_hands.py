"""Hands for the gateway system tests: each says which replica ran it, some keep a ledger of call ids."""

from __future__ import annotations

import asyncio
import json
import os

from hands import Context, hand

REPLICA = os.environ.get("GW_TEST_REPLICA", "?")
LEDGER = os.environ.get("GW_TEST_LEDGER", "")


def _record(call_id: str) -> None:
    # One short O_APPEND write per call, so lines from several replicas never interleave.
    if LEDGER:
        with open(LEDGER, "a") as ledger:
            ledger.write(f"{call_id} {REPLICA}\n")


@hand(description="Say which replica answered.", idempotent=True)
async def whoami() -> str:
    return REPLICA


@hand(description="Count a call in the ledger, then answer; safe to run twice.", idempotent=True)
async def tally(pause: float = 0.02, *, ctx: Context) -> str:
    _record(ctx.call_id)
    await asyncio.sleep(pause)
    return REPLICA


@hand(description="Count a call in the ledger, then answer; must not run twice.")
async def append_once(pause: float = 0.02, *, ctx: Context) -> str:
    _record(ctx.call_id)
    await asyncio.sleep(pause)
    return REPLICA


@hand(description="Show the metadata and deadline the hand received.", idempotent=True)
async def show_call(*, ctx: Context) -> str:
    return json.dumps({"metadata": dict(ctx.metadata), "remaining": ctx.time_remaining(), "replica": REPLICA})


@hand(description="Sleep, then answer.")
async def slow(seconds: float, *, ctx: Context) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds} on {REPLICA}"


@hand(description="Reverse a text.", idempotent=True)
async def reverse(text: str) -> str:
    return text[::-1]


#: The default set; `tests.system.gateway_hands:TEXT` serves only the text hand (a different service).
HANDS = [whoami, tally, append_once, show_call, slow]
TEXT = [reverse]
