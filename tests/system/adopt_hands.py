"""A hand for the adoption system test: not idempotent, counted in the ledger, held until the test opens its gate."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hands import Context, hand
from tests.system.gateway_hands import LEDGER, _record

#: The gates are files next to the ledger: calls with n < HALF wait for gate-early, the others for gate-late.
HALF = 2


@hand(description="Act on the world (must not run twice): counts each execution, then waits for its gate.")
async def act(n: int, *, ctx: Context) -> str:
    _record(ctx.call_id)
    gate = Path(LEDGER).parent / ("gate-early" if n < HALF else "gate-late")
    while not gate.exists():
        await asyncio.sleep(0.02)
    return f"acted {n}"


HANDS = [act]
