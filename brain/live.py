"""What a person watches while a session runs: a live rich tree of turns and tool calls, or one plain line per event."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from brain import events as ev
from brain.events import Call, SessionState, Turn
from brain.humanize import format_duration, summarize_input
from brain.sessions import Event

#: what each call state looks like: (mark, style)
_MARKS = {
    "queued": ("·", "dim"),
    "running": ("…", "cyan"),
    "ok": ("✓", "green"),
    "error": ("✗", "red"),
    "not run": ("–", "dim"),
    "unfinished": ("⊘", "yellow"),
    "waiting": ("?", "bold yellow"),
}
_STATUS_STYLE = {"running": "cyan", "waiting": "bold yellow", "finished": "green", "failed": "red", "cancelled": "yellow", "interrupted": "yellow",
                 "stopped": "yellow"}


# --- what a call and a session look like now -----------------------------------------------------


def call_state(call: Call) -> str:
    """queued | running | ok | error | not run | waiting (for a person): what the tree marks the call with."""
    if call.waiting:
        return "waiting"
    if call.finished is not None:
        if call.not_run:
            return "not run"
        return "error" if call.finished.is_error else "ok"
    return "running" if call.started_at is not None else "queued"


def call_elapsed(call: Call, now: float) -> float | None:
    """The hand's time for a finished call, the time since its (latest) start for a running one."""
    if call.finished is not None:
        return float(call.finished.duration or 0.0)
    return None if call.started_at is None else max(0.0, now - call.started_at)


def error_line(call: Call) -> str:
    lines = [line.strip() for line in ((call.finished.output if call.finished else "") or "").splitlines() if line.strip()]
    if not lines:
        return ""
    # The sandbox ends its output with a bracketed note ("[exit status 3]"): more telling than the first line.
    last = lines[-1]
    return last if last.startswith("[") and last.endswith("]") else lines[0]


def thinking(state: SessionState) -> bool:
    """The model has the next move: the session runs and no call of the last turn is left."""
    if state.status != "running" or state.started_at is None:
        return False
    last = state.last_turn
    return last is None or all(c.finished is not None for c in last.calls)


def counts(state: SessionState) -> dict[str, int]:
    out = dict.fromkeys(_MARKS, 0)
    for call in state.calls.values():
        out[call_state(call)] += 1
    return out


# --- small text helpers --------------------------------------------------------------------------


def human_count(n: int) -> str:
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k".replace(".0k", "k")
    return f"{n / 1_000_000:.1f}M".replace(".0M", "M")


# --- rendering -----------------------------------------------------------------------------------


def _header(view: SessionState, now: float, status: str) -> Text:
    header = Text()
    header.append("session ", style="bold")
    header.append(view.session_id[:12] or "starting…", style="bold")
    header.append("  ")
    header.append(status, style=_STATUS_STYLE.get(status, ""))
    header.append(f"  {format_duration(view.elapsed(now))}", style="dim")
    task = " ".join(view.task.split())
    if task:
        header.append("\n")
        header.append(task[:200] + ("…" if len(task) > 200 else ""), style="italic")
    return header


def _turn_label(turn: Turn) -> Text:
    label = Text(no_wrap=True, overflow="ellipsis")
    label.append(f"turn {turn.number}", style="bold magenta" if turn.synthesis else "bold")
    if turn.synthesis:
        label.append(" (final synthesis)", style="magenta")
    label.append(f" · {turn.stop_reason or '?'}")
    label.append(f" · {human_count(turn.usage.prompt)}→{human_count(turn.usage.output_tokens)} tokens", style="dim")
    label.append(f" · {format_duration(turn.duration)}", style="dim")
    return label


def _state(call: Call, live: bool) -> str:
    """A call still running in a view that no longer follows the session did not finish: say so."""
    state = call_state(call)
    return "unfinished" if state == "running" and not live else state


def _collapsed_calls(turn: Turn, live: bool = True) -> Text:
    """'fs_read ✓3 ✗1, llm_worker ✓2': a turn's calls in one line."""
    by_name: dict[str, dict[str, int]] = {}
    for call in turn.calls:
        state = _state(call, live)
        by_name.setdefault(call.name, {}).setdefault(state, 0)
        by_name[call.name][state] += 1
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, (name, states) in enumerate(by_name.items()):
        if i:
            out.append(", ")
        out.append(name)
        for state, n in states.items():
            mark, style = _MARKS[state]
            out.append(f" {mark}{n if n > 1 else ''}", style=style)
    return out


def _call_label(call: Call, now: float, name_width: int, width: int, live: bool) -> RenderableType:
    state = _state(call, live)
    mark, style = _MARKS[state]
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(call.name.ljust(name_width), style="bold")
    elapsed = format_duration(call_elapsed(call, now)) if state != "unfinished" else "?"
    text.append(f" {elapsed:>6}  ", style=style if state in ("error", "unfinished") else "")
    room = max(10, width - name_width - 12)
    failed = state in ("error", "not run", "unfinished")
    text.append(summarize_input(call.name, call.input, min(28 if failed else 48, room)), style="dim")
    if call.starts > 1:
        text.append(f" (attempt {call.starts})", style="yellow")
    if state == "error":
        text.append(f"  {error_line(call)}", style="red")
    elif state == "not run":
        text.append(f"  not run: {call.finished.reason or ''}", style="dim")
    elif state == "unfinished":
        text.append("  started, no result", style="yellow")
    if state == "running":
        return Spinner("dots", text=text, style="cyan")
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{mark} ", style=style)
    return line.append_text(text)


def _approval_note(call: Call) -> Text:
    """What a person decided about the call, or that it waits for one."""
    out = Text(no_wrap=True, overflow="ellipsis")
    a = call.approval
    if a is None:
        return out
    if a.pending:
        out.append("waits for approval", style="bold yellow")
        return out
    d = a.decision
    if d.approved:
        out.append(f"approved by {d.by}" + (" (input edited)" if d.input is not None else "")
                   + (f" (always for {a.name})" if d.always else ""), style="green")
    else:
        out.append(f"denied by {d.by}: {d.reason or ''}", style="red")
    return out


def how_to_decide(session_id: str, approval: ev.Approval) -> str:
    """The commands that decide a waiting call."""
    return (f"brainhands sessions approve {session_id} {approval.call_id} [--input JSON]"
            f" | deny {session_id} {approval.call_id} --reason TEXT")


def _people(view: SessionState, after_turn: int) -> list[Text]:
    """People's messages that joined the conversation after the turn (0: with the task), and interrupts then."""
    lines = []
    for m in view.said:
        if m.after_turn == after_turn:
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append("» ", style="bold blue")
            line.append(f"{m.by or 'a person'}" + (" interrupted" if m.interrupt else " said") + ": ", style="blue")
            line.append(" ".join(m.text.split()))
            lines.append(line)
    return lines


def _waiting_lines(view: SessionState) -> list[Text]:
    """The requests waiting for a person, with how to decide each (a nested session's ones included)."""
    lines = []
    for a in view.pending_approvals():
        line = Text()
        line.append("? waiting for approval: ", style="bold yellow")
        line.append(f"{a.name}({summarize_input(a.name, a.input, 60)})", style="bold")
        if a.nested:
            line.append(f" in nested session {a.session_id[:12]}", style="yellow")
        line.append(f"\n  {how_to_decide(view.session_id, a)}", style="dim")
        lines.append(line)
    return lines


def _totals(view: SessionState, now: float, live: bool = True) -> Text:
    by_state = counts(view)
    if not live:
        by_state["unfinished"] += by_state["running"]
        by_state["running"] = 0
    started = sum(by_state[s] for s in ("running", "ok", "error", "unfinished"))
    out = Text(style="dim")
    out.append(f"{started} call{'s' if started != 1 else ''}")
    parts = [f"{by_state[s]} {s}" for s in ("running", "waiting", "queued", "error", "not run", "unfinished") if by_state[s]]
    if parts:
        out.append(f" ({', '.join(parts)})")
    budget = int(view.config.get("token_budget") or 0)
    used = view.tokens_used()
    out.append(f" · {human_count(used)} tokens")
    if budget:
        out.append(f" of {human_count(budget)} ({100 * used / budget:.0f}%)")
    max_turns = view.config.get("max_turns")
    turns = sum(1 for t in view.turns if not t.synthesis)
    out.append(f" · turn {turns}" + (f"/{max_turns}" if max_turns else ""))
    if view.limit is not None:
        out.append(f" · limit reached: {view.limit.reason}", style="yellow")
    return out


def _writing(streamed: str, width: int) -> str:
    """The end of the text the model is writing now, on one line."""
    text = " ".join(streamed.split())
    room = max(10, width - 40)
    return text if len(text) <= room else "…" + text[-(room - 1):]


def render_tree(view: SessionState, *, now: float, height: int = 40, width: int = 100, live: bool = True,
                expand_all: bool = False, status: str | None = None, streamed: str = "",
                nested: dict[str, list[RenderableType]] | None = None) -> RenderableType:
    """The session as a tree: earlier turns on one line each, the last (or every) turn with its calls.

    streamed: the text of the turn the model is writing now (it is in no event until the turn ends);
    nested: what to draw under a call, by call id (a sub-agent's own session, under the call that started it)."""
    tree = Tree(_header(view, now, status or view.status), guide_style="dim")
    last_with_calls = max((t.number for t in view.turns if t.calls), default=0)
    budget = max(4, height - 6 - len(view.turns))  # call lines that fit on the screen
    for line in _people(view, 0):
        tree.add(line)
    for turn in view.turns:
        node = tree.add(_turn_label(turn))
        for line in _people(view, turn.number):
            tree.add(line)
        if not turn.calls:
            continue
        if not expand_all and turn.number != last_with_calls:
            node.add(_collapsed_calls(turn, live))
            continue
        calls = turn.calls
        if not expand_all and len(calls) > budget:
            # Keep what changes in view: running first, then errors, then the rest in call order.
            order = {"running": 0, "error": 1, "queued": 2}
            calls = sorted(calls, key=lambda c: order.get(call_state(c), 3))[: budget - 1]
        name_width = min(24, max(len(c.name) for c in turn.calls))
        for call in calls:
            call_node = node.add(_call_label(call, now, name_width, width - 8, live))
            if call.approval is not None:  # on a line of its own: who decided is not to be cut off by the input
                call_node.add(_approval_note(call))
            for below in (nested or {}).get(call.call_id, ()):
                call_node.add(below)
        hidden = len(turn.calls) - len(calls)
        if hidden:
            rest = [c for c in turn.calls if c not in calls]
            done = sum(1 for c in rest if call_state(c) == "ok")
            node.add(Text(f"… {hidden} more ({done} ok, {hidden - done} other)", style="dim"))
    if thinking(view) and live:
        label = Text(f"turn {len(view.turns) + 1} · model {'writing' if streamed else 'thinking'}… "
                     f"{format_duration(now - (view.last_at or now))}", style="bold", no_wrap=True, overflow="ellipsis")
        if streamed:
            label.append(f"  {_writing(streamed, width)}", style="italic")
        tree.add(Spinner("dots", text=label, style="magenta"))
    for interrupt in view.interrupts:
        if interrupt.call_ids:
            tree.add(Text(f"⏹ {interrupt.by or 'a person'} interrupted: {len(interrupt.call_ids)} call"
                          f"{'s' if len(interrupt.call_ids) != 1 else ''} cancelled", style="yellow"))
    return Group(tree, *_waiting_lines(view), _totals(view, now, live))


def render_summary(view: SessionState, *, now: float, status: str | None = None) -> RenderableType:
    """The compact record left on the terminal when a session ends: one line per turn, then the totals."""
    status = status or view.status
    mark = {"finished": "✓", "failed": "✗", "cancelled": "⊘"}.get(status, "⊘")
    head = Text()
    head.append(f"{mark} {status}", style=f"bold {_STATUS_STYLE.get(status, '')}")
    head.append(f" in {format_duration(view.elapsed(now))} · session {view.session_id}", style="dim")
    if view.outcome.cut_short:
        head.append(f" · cut short ({view.outcome.reason})", style="yellow")
    lines: list[RenderableType] = [head]
    turns = Table.grid(padding=(0, 2))
    turns.add_column(no_wrap=True)
    turns.add_column(no_wrap=True)
    turns.add_column(no_wrap=True, justify="right")
    turns.add_column()  # the calls wrap under themselves on a narrow terminal
    for turn in view.turns:
        calls = _collapsed_calls(turn, live=False)
        calls.no_wrap, calls.overflow = False, "fold"
        turns.add_row(Text(f"  turn {turn.number}", style="bold"),
                      Text(turn.stop_reason or "?", style="magenta" if turn.synthesis else ""),
                      Text(format_duration(turn.duration), style="dim"), calls)
    if view.turns:
        lines.append(turns)
    totals = _totals(view, now, live=False)
    totals.pad_left(2)
    lines.append(totals)
    if status in ("failed", "cancelled") and view.outcome.reason:
        lines.append(Text(f"  {view.outcome.reason}", style=_STATUS_STYLE[status]))
    return Group(*lines)


def plain_line(view: SessionState, event: Event) -> str | None:
    """One line a person can read in a log file, for an event already applied to view."""
    p = ev.payload(event)
    if isinstance(p, ev.SessionStarted):
        return f"session {event.session_id} started: {' '.join(view.task.split())[:120]}"
    if isinstance(p, ev.ModelResponse):
        turn = view.turns[-1]
        calls = f", {len(turn.calls)} tool call{'s' if len(turn.calls) != 1 else ''}" if turn.calls else ""
        return (f"turn {turn.number}: {turn.stop_reason}{calls} · {human_count(turn.usage.prompt)}→"
                f"{human_count(turn.usage.output_tokens)} tokens · {format_duration(turn.duration)}")
    if isinstance(p, ev.ToolCallStarted):
        call = view.calls.get(p.call_id)
        hint = summarize_input(call.name, call.input) if call else ""
        again = f" (attempt {p.attempt})" if p.attempt > 1 else ""
        return f"  {p.name} started{again}: {hint}"
    if isinstance(p, ev.ToolCallFinished):
        call = view.calls.get(p.call_id)
        state = call_state(call) if call else ("error" if p.is_error else "ok")
        note = f": {error_line(call)[:160]}" if call and state == "error" else ""
        if state == "not run":
            note = f": {p.reason}"
        return f"  {p.name} {state} {format_duration(p.duration or 0.0)}{note}"
    if isinstance(p, ev.LimitReached):
        return f"limit reached ({p.reason}): asking the model for a final synthesis"
    if isinstance(p, ev.ApprovalRequested):
        where = f" in nested session {p.session_id}" if p.session_id else ""
        approval = view.approvals.get(p.call_id)
        how = f"; decide with: {how_to_decide(view.session_id, approval)}" if approval is not None else ""
        return f"  {p.name} waits for approval{where}: {summarize_input(p.name, p.input)}{how}"
    if isinstance(p, ev.ApprovalDecided):
        verdict = "approved" if p.approved else f"denied ({p.reason})"
        return f"  call {p.call_id} {verdict} by {p.by}" + (" with an edited input" if p.input is not None else "")
    if isinstance(p, ev.SessionWaiting):
        return f"session waiting for a person: {len(p.calls)} call{'s' if len(p.calls) != 1 else ''} to decide"
    if isinstance(p, ev.SessionResumed):
        return f"session resumed on {p.by}"
    if isinstance(p, ev.UserMessage):
        return f"» {p.by or 'a person'}{' interrupted' if p.interrupt else ' said'}: {' '.join(p.text.split())[:160]}"
    if isinstance(p, ev.CallsInterrupted):
        return f"interrupted by {p.by or 'a person'}: {len(p.call_ids)} calls cancelled"
    if isinstance(p, ev.SessionEnded):
        by_state = counts(view)
        reason = view.outcome.reason
        return (f"session {view.status} in {format_duration(view.elapsed(event.ts))}: {len(view.turns)} turns, "
                f"{by_state['ok'] + by_state['error']} calls ({by_state['error']} failed), "
                f"{human_count(view.tokens_used())} tokens" + (f"; {reason}" if view.status != "finished" and reason else ""))
    return None


# --- the approval prompt -------------------------------------------------------------------------

PROMPT_CHOICES = "[y]es / [n]o / [e]dit the input / [a]lways for {name} in this session"

Answer = Callable[[str], Awaitable[str] | str]


def render_prompt(session_id: str, approval: ev.Approval) -> Text:
    """What the live view shows when a call waits for the person at the terminal."""
    text = Text()
    text.append("? approve this call? ", style="bold yellow")
    text.append(approval.name, style="bold")
    if approval.nested:
        text.append(f" (in nested session {approval.session_id[:12]})", style="yellow")
    text.append(f"  call {approval.call_id} · rule {approval.rule or '?'}\n", style="dim")
    text.append(json.dumps(approval.input, ensure_ascii=False, indent=2)[:2000] + "\n")
    text.append(PROMPT_CHOICES.format(name=approval.name), style="bold")
    return text


async def prompt_decision(console: Console, session_id: str, approval: ev.Approval, answer: Answer) -> dict[str, Any]:
    """Ask the person until the answer is a decision; the keyword arguments of brain.inbox.decide for it."""

    async def ask(question: str) -> str:
        reply = answer(question)
        if isinstance(reply, Awaitable):
            reply = await reply
        return (reply or "").strip()

    console.print(render_prompt(session_id, approval), highlight=False)
    while True:
        choice = (await ask("decide [y/n/e/a]: ")).lower()[:1]
        if choice in ("y", "a"):
            return {"approved": True, "always": choice == "a"}
        if choice == "n":
            reason = await ask("why (the model reads it): ")
            return {"approved": False, "reason": reason or "denied at the terminal"}
        if choice == "e":
            raw = await ask("input to run instead (JSON): ")
            try:
                edited = json.loads(raw)
            except ValueError as exc:
                console.print(Text(f"not JSON ({exc}); try again", style="red"))
                continue
            if not isinstance(edited, dict):
                console.print(Text("the input is a JSON object, e.g. {\"path\": \"a.md\"}; try again", style="red"))
                continue
            return {"approved": True, "input": edited}
        console.print(Text("answer y, n, e or a", style="red"))


def _read_line(question: str) -> Awaitable[str]:
    """A line from the terminal, read on a daemon thread: a Ctrl-C while the prompt waits ends the process at once
    (an executor thread blocked in input() would hold the interpreter's exit until Enter)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        try:
            line = input(question)
        except BaseException:  # EOF: the terminal is gone, no one will answer here
            loop.call_soon_threadsafe(lambda: answer.done() or answer.set_exception(EOFError()))
            return
        loop.call_soon_threadsafe(lambda: answer.done() or answer.set_result(line))

    threading.Thread(target=read, name="approval-prompt", daemon=True).start()
    return answer


# --- the view ------------------------------------------------------------------------------------


class LiveView:
    """Shows a session as it runs. Use as a context manager; pass .on_event as the brain's on_event.

    On a terminal (console.is_terminal) it is a live tree refreshed ~8 times a second, replaced at the
    end by a compact summary; elsewhere (a pipe, a log file) it prints one plain line per event.
    on_event may be called from the event loop while rich's refresh thread renders: a lock keeps the
    fold and the render apart.
    """

    def __init__(self, console: Console, *, refresh_per_second: float = 8, clock: Callable[[], float] = time.time,
                 live: bool | None = None, answer: Answer | None = None):
        """answer: how the approval prompt reads the person's reply (default: a line from the terminal)."""
        self.console = console
        self.clock = clock
        self.view = SessionState()
        self.live = console.is_terminal if live is None else live
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._refresh = refresh_per_second
        self._done = False
        self.streamed = ""  # the text of the turn being written, shown as it arrives, dropped when the turn is logged
        self._answer = answer
        self._store = None
        self._asked: set[str] = set()
        self._prompts: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def asks(self) -> bool:
        """Whether this view can put approval requests to a person: a live tree on a terminal, someone to type."""
        import sys

        return self.live and (self._answer is not None or sys.stdin.isatty())

    def attach(self, store) -> None:
        """Decide approval requests here: each one is put to the person and the answer written to this store."""
        self._store = store

    async def _ask(self, session_id: str, call_id: str) -> None:
        from brain.inbox import NothingToDecide, NotRunning, decide, person

        self._prompts = self._prompts or asyncio.Lock()
        async with self._prompts:
            with self._lock:
                approval = self.view.approvals.get(call_id)
            if approval is None or not approval.pending:
                return  # decided elsewhere meanwhile
            if self._live is not None:
                self._live.stop()
            try:
                answer = self._answer or _read_line
                try:
                    decision = await prompt_decision(self.console, session_id, approval, answer)
                except EOFError:
                    self.console.print(Text(f"no answer here; decide with: {how_to_decide(session_id, approval)}",
                                            style="yellow"))
                    return
                try:
                    await decide(self._store, session_id, call_id, by=person(), **decision)
                except (NothingToDecide, NotRunning) as exc:
                    self.console.print(Text(str(exc), style="yellow"))
            finally:
                if self._live is not None and not self._done:
                    self._live.start()

    def __enter__(self) -> LiveView:
        if self.live:
            self._live = Live(console=self.console, get_renderable=self.renderable, refresh_per_second=self._refresh,
                              transient=True, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = None
        if self.view.status == "running":
            interrupted = exc_type is None or issubclass(exc_type, KeyboardInterrupt | asyncio.CancelledError)
            status = "interrupted" if interrupted else "stopped"
        self.final(None, status=status)

    def replay(self, events: list[Event]) -> None:
        """Take in what happened before this view started (a woken session's log) without printing it."""
        with self._lock:
            for event in events:
                self.view.apply(event)

    def on_text(self, session_id: str, text: str) -> None:
        """A piece of the current turn's text (the brain's on_text): shown now, never written to the log."""
        with self._lock:
            if session_id == self.view.session_id or not self.view.session_id:
                self.streamed += text

    def on_event(self, event: Event) -> None:
        with self._lock:
            self.view.apply(event)
            if event.type == ev.MODEL_RESPONSE:
                self.streamed = ""
            line = None if self.live else plain_line(self.view, event)
        if self._store is not None and event.type == ev.APPROVAL_REQUESTED and event.data.get("call_id") not in self._asked:
            self._asked.add(event.data["call_id"])
            task = asyncio.get_running_loop().create_task(self._ask(event.session_id, event.data["call_id"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if line is not None:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def renderable(self) -> RenderableType:
        with self._lock:
            return render_tree(self.view, now=self.clock(), height=self.console.height, width=self.console.width,
                               streamed=self.streamed)

    def final(self, result: Any = None, *, status: str | None = None) -> None:
        """Stop the live tree and leave the compact summary (once); result is the RunResult, if there is one."""
        if self._done:
            return
        self._done = True
        if self._live is not None:
            self._live.stop()
            self._live = None
        if not self.live:
            if status in ("interrupted", "stopped") and self.view.started_at is not None:
                self.console.print(f"session {self.view.session_id} {status}", highlight=False)
            return
        if result is not None:
            status = status or getattr(result, "status", None)
        with self._lock:
            if self.view.started_at is None:
                return
            self.console.print(render_summary(self.view, now=self.clock(), status=status))
