"""The timeline of a real 12-worker session, rendered by headless Chromium: a screenshot and the laid-out DOM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
from pathlib import Path

import pytest

from brain import Brain, BrainConfig, ScriptedModel, open_store
from brain.timeline import load_timeline
from hands import HandError, hand
from tests.brain.test_timeline import find, parse_html

pytestmark = pytest.mark.system

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WORKERS = 12
SLOW, FAILING = 7, 3
EVIL = "<script>window.pwned = 1</script>"

# Appended to a copy of the page (never to the page itself): after layout, write each bar's box onto it so
# --dump-dom carries where Chromium really drew it, and record whether any script from the content ran.
PROBE = """<script>
for (const bar of document.querySelectorAll('[data-kind="tool-call"], [data-kind="turn"]')) {
  const r = bar.getBoundingClientRect();
  bar.dataset.box = [r.left, r.top, r.width, r.height].map(v => v.toFixed(2)).join(',');
}
document.body.dataset.scripts = String(document.scripts.length);
document.body.dataset.pwned = String(window.pwned !== undefined);
document.body.dataset.viewport = String(window.innerWidth);
</script>"""


@pytest.fixture
def chromium_binary() -> str:
    """Debian's chromium; a skip with the reason when it is absent, a failure under CI."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium) to render the timeline")
    return path


async def chromium(binary: str, profile: Path, *args: str, timeout: float = 90) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1400,900", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode()[-2000:]}"
    return out.decode()


@pytest.fixture
async def twelve_worker_session(hand_service, tmp_path):
    """A session the real brain ran: one turn fanning out to 12 workers that all run at once, then a synthesis."""
    in_flight, all_in = 0, asyncio.Event()

    @hand(description="Survey one module and report on it.")
    async def survey(module: int) -> str:
        nonlocal in_flight
        in_flight += 1
        if in_flight == WORKERS:
            all_in.set()
        # Every worker waits for the whole fan-out before it finishes (bounded), so the 12 overlap for sure;
        # then each takes a little longer than the last, and one is the slow worker the page should show.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 10)
        await asyncio.sleep(0.9 if module == SLOW else 0.05 + 0.02 * module)
        if module == FAILING:
            raise HandError(f"module {module}: the parser crashed on line 12")
        return f"module {module}: 3 public functions, 2 TODOs. {EVIL}"

    running = await hand_service([survey])
    store = await open_store(str(tmp_path / "sessions.db"))
    model = ScriptedModel([
        {"text": "I will survey every module in parallel.",
         "tool_calls": [["survey", {"module": i}] for i in range(WORKERS)]},
        {"text": "All twelve modules surveyed: module 3 could not be parsed; the rest are small and tidy."},
    ], delay=0.2)
    brain = Brain(target=f"127.0.0.1:{running.port}", model=model, store=store,
                  config=BrainConfig(max_parallel=16, call_timeout=30))
    try:
        result = await brain.run("Survey the twelve modules of the project and summarize their state.")
        assert result.ok, result
        yield store, result.session_id
    finally:
        await brain.close()
        await store.close()


async def test_the_timeline_of_a_twelve_worker_session_renders_twelve_parallel_bars_in_chromium(
    chromium_binary, twelve_worker_session, tmp_path
):
    binary = chromium_binary
    store, session_id = twelve_worker_session
    page = await load_timeline(store, session_id)

    ARTIFACTS.mkdir(exist_ok=True)
    html_file = ARTIFACTS / "timeline-12-workers.html"
    html_file.write_text(page)
    screenshot = ARTIFACTS / "timeline-12-workers.png"
    screenshot.unlink(missing_ok=True)
    await chromium(binary, tmp_path / "profile-shot", f"--screenshot={screenshot}", html_file.as_uri())
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1400, 900)

    # A second picture with one hover card held open (CSS on a copy: headless Chromium has no pointer),
    # so a person can check the card's look from the artifacts.
    hover = tmp_path / "hover.html"
    failing_id = f"toolu_s000_{FAILING + 1:03d}"  # +1: the turn's text block comes before the tool_use blocks
    hover.write_text(page.replace("</head>", f'<style>[data-call-id="{failing_id}"] .tip{{display:block}}</style></head>'))
    await chromium(binary, tmp_path / "profile-hover", f"--screenshot={ARTIFACTS / 'timeline-12-workers-hover.png'}",
                   hover.as_uri())

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    els = parse_html(await chromium(binary, tmp_path / "profile-dom", "--dump-dom", probed.as_uri()))

    [body] = [e for e in els if e.tag == "body"]
    assert body.attrs["data-viewport"] == "1400"
    assert body.attrs["data-scripts"] == "1", "only the probe may be a script: the content made elements"
    assert body.attrs["data-pwned"] == "false"

    bars = find(els, data_kind="tool-call")
    assert len(bars) == WORKERS
    boxes = {b.attrs["data-call-id"]: [float(v) for v in b.attrs["data-box"].split(",")] for b in bars}
    # 12 distinct rows, drawn one under another without touching.
    tops = sorted(top for _, top, _, _ in boxes.values())
    height = min(h for *_, h in boxes.values())
    assert height > 0 and all(b - a >= height for a, b in zip(tops, tops[1:], strict=False))
    assert len({b.attrs["data-row"] for b in bars}) == WORKERS
    # Overlapping in time, as drawn: every bar starts left of where every other one ends, all on screen.
    assert max(x for x, _, _, _ in boxes.values()) < min(x + w for x, _, w, _ in boxes.values())
    assert all(0 < x and x + w <= 1400 and w > 0 for x, _, w, _ in boxes.values())
    # The slow worker stands out: the widest bar; the failing one is coloured as an error.
    statuses = {b.attrs["data-call-id"]: b.attrs["data-status"] for b in bars}
    slow_id = f"toolu_s000_{SLOW + 1:03d}"
    assert max(boxes, key=lambda cid: boxes[cid][2]) == slow_id
    assert statuses.pop(failing_id) == "error" and set(statuses.values()) == {"ok"}
    # Above them the orchestrator's turn, below them the synthesis, on the same axis.
    [turn] = find(els, data_kind="turn", data_status="model")
    [synthesis] = find(els, data_kind="turn", data_status="synthesis")
    turn_top, synthesis_top = float(turn.attrs["data-box"].split(",")[1]), float(synthesis.attrs["data-box"].split(",")[1])
    assert turn_top < tops[0] and tops[-1] < synthesis_top
    synthesis_left = float(synthesis.attrs["data-box"].split(",")[0])
    assert synthesis_left >= max(x + w for x, _, w, _ in boxes.values()) - 1
