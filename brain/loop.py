"""The orchestrator loop: ask the model, fan its tool calls out to the hands, repeat; every step in the session log."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from brain import budget as tb
from brain import citations as cites
from brain import events as ev
from brain import prompts
from brain import tracing as traces
from brain.config import BrainConfig
from brain.dispatch import Dispatcher, HandsUnauthenticated
from brain.events import SessionState
from brain.model import ContextWindowExceeded, Model, ModelError
from brain.sessions import Event, SeqConflict, SessionNotFound, SessionStore, StoreUnavailable
from hands import HandClient

log = structlog.get_logger("brain")

#: stop reasons after which the model is done and its text is the result
_DONE = ("end_turn", "stop_sequence")


async def record_citations(store: SessionStore, state: SessionState, text: str) -> ev.Citations | None:
    """The answer's citations checked against what this session and its sub-sessions saw (read from the store)."""
    cited, sources = cites.parse(text)
    if not cited and not sources and not cites.server_citation_urls(state):
        return None
    from brain.timeline.tree import session_tree

    subs = []
    try:
        for _, info in await session_tree(store, state.session_id):
            subs.append(SessionState.from_events(info.id, await store.events(info.id)))
    except Exception as exc:  # a store hiccup: check against this session's own calls rather than not at all
        log.warning("cannot read the sub-sessions to check citations", session_id=state.session_id, error=str(exc))
    return cites.check_session(state, text, subs)


def server_tool_definitions(config: BrainConfig) -> list[dict[str, Any]]:
    """The Messages API's definitions of the Anthropic server tools the config enables, each with a use limit."""
    kinds = {"web_search": "web_search_20250305", "web_fetch": "web_fetch_20250910"}
    out = []
    for name in config.server_tools:
        tool: dict[str, Any] = {"type": kinds[name], "name": name, "max_uses": config.server_tool_max_uses}
        if name == "web_fetch":
            tool["citations"] = {"enabled": True}
        out.append(tool)
    return out


class SessionBusy(Exception):
    """Another brain holds the session's lease."""


class LeaseLost(Exception):
    """This brain's lease on the session ran out or was taken: it must stop writing."""


@dataclass(frozen=True)
class RunResult:
    """How a session ended."""

    session_id: str
    status: str  # finished | failed | cancelled | waiting (for a person's decision; any brain continues it)
    text: str  # the synthesized result (finished) or the reason (failed)
    cut_short: bool = False  # a limit ended the work early: the text is a synthesis of what was known
    reason: str | None = None  # why it was cut short, refused or failed
    usage: dict[str, Any] = field(default_factory=dict)  # turns, tool_calls, model_usage, hand_usage, total_tokens
    citations: ev.Citations | None = None  # the answer's [n] citations, checked (finished only; None: it cites none)

    @property
    def ok(self) -> bool:
        return self.status == "finished"

    @classmethod
    def from_state(cls, state: SessionState) -> RunResult:
        o = state.outcome
        if state.status == "finished":
            return cls(state.session_id, "finished", o.result, o.cut_short, o.reason, o.totals, state.citations)
        if state.status in ("waiting", "running"):
            pending = state.pending_approvals()
            text = ("waiting for approval of " + ", ".join(f"{a.name} ({a.call_id})" for a in pending)
                    if pending else state.status)
            return cls(state.session_id, state.status, text, False, None, state.totals())
        text = o.reason if o.reason is not None else state.status
        return cls(state.session_id, state.status, text, False, o.reason, o.totals)


class Brain:
    """The orchestrator. `await Brain(target=..., model=..., store=...).run(task)` -> RunResult.

    target is the address of a gateway (or a single hand service), or a HandClient. The brain
    keeps nothing between steps that is not in the store's log, so `wake(session_id)` in any
    process continues a session where it stopped.
    """

    def __init__(
        self,
        *,
        target: str | HandClient,
        model: Model,
        store: SessionStore,
        config: BrainConfig = BrainConfig(),
        api_key: str | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_text: Callable[[str, str], None] | None = None,
        owner: str | None = None,
        depth: int = 0,
        tools: Sequence[str] | None = None,
        wait_for_decisions: bool = False,
        relay_to: str | None = None,
        poll: float = 0.25,
    ):
        """depth: the x-brainhands-depth of this brain's calls (a worker agent's brain runs one deeper than
        its caller); tools: the hand names this brain may use (None: every hand Describe lists).

        wait_for_decisions: when calls wait for approval, let the session go (no lease) and wait here for the
        decisions, then take it up again; otherwise run()/wake() return a RunResult with status "waiting".
        relay_to: the root session a nested brain's approval requests are copied to, so a person sees them there.
        poll: seconds between reads of the log for what people added (decisions, messages, interrupts)."""
        self.model = model
        self.store = store
        self.config = config
        self.on_event = on_event
        self.on_text = on_text  # (session id, a piece of the turn's text as it streams): never logged
        self.depth = depth
        self.allowed_tools = None if tools is None else frozenset(tools)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._own_client = not isinstance(target, HandClient)
        self.client = HandClient(target, api_key=api_key) if isinstance(target, str) else target
        self._driving: dict[str, asyncio.Task] = {}  # session id -> the task in drive(), for cancel()
        self._cancels: dict[str, str] = {}  # session id -> reason, for sessions cancel() asked to stop
        self.wait_for_decisions = wait_for_decisions
        self.relay_to = relay_to
        self.poll = poll
        self._nudges: dict[str, asyncio.Event] = {}  # session id -> set to read the log now (a decision came in)

    def _dispatcher(self, config: BrainConfig) -> Dispatcher:
        return Dispatcher(self.client, call_timeout=config.call_timeout, depth=self.depth,
                          metadata=config.workspace_metadata())

    async def run(self, task: str, *, parent_id: str | None = None, tenant: str | None = None) -> RunResult:
        """Start a session for the task and drive it to its end."""
        if not task.strip():
            raise ValueError("the task is empty")
        tools = await self._dispatcher(self.config).tools(timeout=self.config.describe_timeout)
        if self.allowed_tools is not None:
            tools = [t for t in tools if t["name"] in self.allowed_tools]
        if self.config.server_tools:
            # The model's own web tools stand in for the hands of the same name (two tools cannot share one).
            tools = [t for t in tools if t["name"] not in self.config.server_tools]
            tools += server_tool_definitions(self.config)
        owner = {"tenant": tenant} if tenant else {}  # the BrainService tenant that started it
        session_id = await self.store.create_session(task, self.config.as_dict(), parent_id, **owner)
        if not await self.store.acquire_lease(session_id, self.owner, self.config.lease_ttl):
            raise SessionBusy(f"session {session_id} was taken by another brain as it was created")
        driver = _Driver(self, SessionState(session_id), self.config)
        return await driver.drive(
            first=ev.SessionStarted(
                task=task,
                config=self.config.as_dict(),
                system=prompts.ORCHESTRATOR_SYSTEM,
                tools=tools,
                model=getattr(self.model, "id", ""),
                parent_id=parent_id,
            )
        )

    async def wake(self, session_id: str) -> RunResult:
        """Continue a session from its log: finished calls are reused, unfinished ones re-issued with their call_id."""
        info = await self.store.get_session(session_id)
        if info is None:
            raise SessionNotFound(f"no session {session_id!r}")
        state = SessionState.from_events(session_id, await self.store.events(session_id))
        if state.status not in ("running", "waiting") or _still_waiting(state):
            return RunResult.from_state(state)
        config = BrainConfig.from_dict(state.config) if state.config else self.config
        if not await self.store.acquire_lease(session_id, self.owner, config.lease_ttl):
            info = await self.store.get_session(session_id)
            raise SessionBusy(
                f"session {session_id} is held by {info.lease_owner} until its lease expires"
                f" (in {max(0.0, (info.lease_expires_at or 0) - time.time()):.0f}s)"
            )
        # Re-read under the lease: the previous holder may have written more before it stopped.
        events = await self.store.events(session_id)
        state = SessionState.from_events(session_id, events)
        if _still_waiting(state):
            with contextlib.suppress(Exception):
                await self.store.release_lease(session_id, self.owner)
            return RunResult.from_state(state)
        return await _Driver(self, state, config).drive(woken_from=traces.earlier_trace(events))

    def nudge(self, session_id: str) -> None:
        """Tell the brain driving the session here to read its log now (someone added a decision or a message)."""
        if (event := self._nudges.get(session_id)) is not None:
            event.set()

    def cancel(self, session_id: str, reason: str = "cancelled") -> bool:
        """Stop a session this brain is driving: its in-flight tool calls are cancelled, the log ends with
        session_cancelled, and run()/wake() return a RunResult with status "cancelled".

        False when this brain is not driving the session. Only a cancel asked for here ends the session:
        any other cancellation of the driving task (a shutdown) leaves it running in the log, to be woken.
        """
        task = self._driving.get(session_id)
        if task is None or task.done():
            return False
        self._cancels[session_id] = reason
        task.cancel()
        return True

    async def close(self) -> None:
        if self._own_client:
            await self.client.close()


def _still_waiting(state: SessionState) -> bool:
    """Waiting, and nothing a brain could go on with: no decision and no interrupt came in since."""
    return state.status == "waiting" and bool(_undecided(state)) and not state.interrupt_pending


def _undecided(state: SessionState) -> list[ev.Call]:
    """The session's own calls still waiting for a decision (nested requests wait in their own session)."""
    return [c for c in state.calls.values() if c.waiting]


class _Driver:
    """Drives one session: each step is decided from the folded log, so a woken session takes the same path."""

    def __init__(self, brain: Brain, state: SessionState, config: BrainConfig):
        self.brain = brain
        self.state = state
        self.config = config
        self.dispatcher = brain._dispatcher(config)
        self._queued: list[tuple[str, dict[str, Any], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self._log_lock = asyncio.Lock()  # one reader-and-folder of the log at a time: the writer or the poller
        self._nudge = brain._nudges.setdefault(state.session_id, asyncio.Event()) if state.session_id else asyncio.Event()
        self._lease_held = True
        self._let_go = False  # this brain let the waiting session go: the drive ends, whoever decides continues it
        self.log = log.bind(session_id=state.session_id)
        self._turn_spans: dict[int, Any] = {}  # turn number -> its span, the parent of the turn's tool call spans

    async def record(self, payload: ev.Payload) -> Event:
        """Append the event (seq = last + 1) and fold it into the state: the only way the state changes.

        Returns once the event is durable. Events recorded while a write is in flight go to the store
        together in the next write (one transaction, one fsync): a fan-out of K calls logs its K starts
        in a few commits instead of K one after another, which was most of a wide turn's wall time.
        """
        done = asyncio.get_running_loop().create_future()
        self._queued.append((payload.TYPE, payload.to_data(), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        return await done

    async def _write_queued(self) -> None:
        """The one writer of this session's log: appends what is queued, in order, batch by batch."""
        while self._queued:
            # A record() cancelled before its write began is dropped, as it was never written.
            batch = [item for item in self._queued if not item[2].done()]
            self._queued = []
            if not batch:
                continue
            try:
                async with self._log_lock:
                    events = await self._append([(type, data) for type, data, _ in batch])
                    for event in events:
                        self.state.apply(event)
            except BaseException as exc:
                cancelled = isinstance(exc, asyncio.CancelledError)
                for _, _, done in batch:
                    if done.done():
                        pass
                    elif cancelled:
                        done.cancel()
                    else:
                        done.set_exception(exc)
                if cancelled:
                    raise
                continue
            for event, (_, _, done) in zip(events, batch, strict=True):
                try:
                    if self.brain.on_event is not None:
                        self.brain.on_event(event)
                except Exception as exc:
                    if not done.done():
                        done.set_exception(exc)
                    continue
                if not done.done():
                    done.set_result(event)

    async def _append(self, items: list[tuple[str, dict[str, Any]]]) -> list[Event]:
        """Append a batch after the folded state's last seq, riding out a store outage of up to config.store_retry s.

        A write that failed with the store unreachable may still have committed (the connection can die after the
        commit): if the retry then finds its seqs taken, the events there are read back, and when they are this very
        batch the write is taken as done. Past store_retry the StoreUnavailable goes up: the session stays running
        in its log, for a wake once the store is back.
        """
        store, sid = self.brain.store, self.state.session_id
        loop = asyncio.get_running_loop()
        deadline, delay, maybe_written = None, 0.1, False
        while True:
            first = self.state.seq + 1
            try:
                if len(items) == 1:
                    return [await store.append(sid, first, *items[0])]
                return await store.append_many(sid, first, items) if items else []
            except SeqConflict:
                if not maybe_written:
                    if await self._absorb_locked():
                        continue  # a person's decision or message took the seq: append after it
                    raise
                written = (await store.events(sid, after_seq=first - 1))[: len(items)]
                if [(e.type, e.data) for e in written] != [(t, json.loads(json.dumps(d))) for t, d in items]:
                    raise
                return written
            except StoreUnavailable as exc:
                now = loop.time()
                deadline = deadline if deadline is not None else now + self.config.store_retry
                if now >= deadline:
                    raise StoreUnavailable(f"{exc} (retried for {self.config.store_retry:g}s)") from exc
                maybe_written = True
                self.log.warning("session store unavailable; retrying the append", error=str(exc), retry_in=delay)
                await asyncio.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 2.0)

    async def _absorb_locked(self) -> bool:
        """Fold in what people appended to the log since the last event folded (the caller holds _log_lock).

        True when there was something and all of it was theirs (EXTERNAL); SeqConflict when another brain wrote.
        """
        sid = self.state.session_id
        added = await self.brain.store.events(sid, after_seq=self.state.seq)
        if not added:
            return False
        foreign = [e for e in added if e.type not in ev.EXTERNAL and e.type != ev.SESSION_RESUMED]
        if foreign and self._lease_held:
            raise SeqConflict(f"seq {foreign[0].seq} ({foreign[0].type}) was written by another brain")
        for event in added:
            self.state.apply(event)
            if self.brain.on_event is not None:
                with contextlib.suppress(Exception):
                    self.brain.on_event(event)
        self._nudge.set()
        return True

    async def absorb(self) -> bool:
        async with self._log_lock:
            return await self._absorb_locked()

    async def _writes_settled(self) -> None:
        """Wait for the writer to finish what it has begun (it runs on even when the records' awaiters are cancelled)."""
        writer = self._writer
        if writer is not None and not writer.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(writer)

    async def drive(self, first: ev.SessionStarted | None = None, woken_from: dict[str, str] | None = None) -> RunResult:
        """Drive the session to its end, inside its span while tracing is on (the trace's ids go in session_started)."""
        parent_id = first.parent_id if first is not None else None
        with traces.session_span(self.state.session_id, depth=self.brain.depth, woken_from=woken_from, parent_id=parent_id):
            return await self._drive(traces.with_trace(first))

    async def _drive(self, first: ev.SessionStarted | None = None) -> RunResult:
        store, sid, owner = self.brain.store, self.state.session_id, self.brain.owner
        steps = asyncio.current_task()
        lost = asyncio.Event()

        async def keep_lease():
            while True:
                await asyncio.sleep(self.config.lease_ttl / 3)
                if not self._lease_held:
                    continue
                try:
                    renewed = await store.renew_lease(sid, owner, self.config.lease_ttl)
                except Exception as exc:  # a store hiccup: try again at the next beat, the TTL has slack
                    self.log.warning("lease renewal failed", error=str(exc))
                    continue
                if not renewed:
                    lost.set()
                    steps.cancel()
                    return

        async def read_inbox():
            while True:
                await asyncio.sleep(self.brain.poll)
                try:
                    await self.absorb()
                except SeqConflict:
                    lost.set()
                    steps.cancel()
                    return
                except Exception as exc:  # a store hiccup: read again at the next beat
                    self.log.warning("reading the session log failed", error=str(exc))

        renewer = asyncio.create_task(keep_lease())
        self.brain._driving[sid] = steps
        inbox: asyncio.Task | None = None
        try:
            self.brain._nudges[sid] = self._nudge
            if first is not None:
                await self.record(first)
            inbox = asyncio.create_task(read_inbox())
            if self.state.status == "waiting":
                await self.record(ev.SessionResumed(by=owner))
            while self.state.status == "running" and not self._let_go:
                await self.step()
        except asyncio.CancelledError:
            if lost.is_set():
                steps.uncancel()
                raise LeaseLost(f"session {sid}: lost the lease; another brain may be driving it") from None
            if sid not in self.brain._cancels:
                raise
            steps.uncancel()
            # Shielded: a second cancellation (a shutdown) must not leave the log without its end.
            await asyncio.shield(self.record_cancelled(self.brain._cancels[sid]))
        except SeqConflict as exc:
            raise LeaseLost(f"session {sid}: another writer appended to the log ({exc})") from None
        finally:
            self.brain._driving.pop(sid, None)
            self.brain._cancels.pop(sid, None)
            self.brain._nudges.pop(sid, None)
            renewer.cancel()
            if inbox is not None:
                inbox.cancel()
            for task in (renewer, inbox):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            with contextlib.suppress(Exception):
                await asyncio.shield(store.release_lease(sid, owner))
        return RunResult.from_state(self.state)

    async def record_cancelled(self, reason: str) -> None:
        """End the log with session_cancelled, after the events that cancelled appends finished writing.

        A store write runs on a thread (or in the database) and completes even when the coroutine awaiting it
        is cancelled, so the log may be ahead of the folded state: fold what is there (and tell on_event) first.
        """
        await self._writes_settled()
        for event in await self.brain.store.events(self.state.session_id, after_seq=self.state.seq):
            self.state.apply(event)
            if self.brain.on_event is not None:
                self.brain.on_event(event)
        if self.state.status == "running":
            await self.record(ev.SessionCancelled(reason=reason, totals=self.state.totals()))

    # --- one step -------------------------------------------------------------------------------

    async def step(self) -> None:
        s = self.state
        turn = s.last_turn
        if s.interrupt_pending and not (turn is not None and turn.calls and any(c.finished is None for c in turn.calls)):
            await self.record(ev.CallsInterrupted(call_ids=[], by=self._interrupter()))  # nothing was in flight
            return
        if turn is None:
            if s.limit is None and self._no_room_for_a_turn():
                await self.record(self._token_limit())
            return await self.ask()
        if turn.calls and any(c.finished is None for c in turn.calls):
            return await self.run_calls(turn)
        if s.unanswered() and s.limit is None and self.state.status == "running":
            return await self.ask()  # a person spoke since the model's last word: it gets to answer
        if s.limit is not None and s.limit_after_turn == len(s.turns):
            return await self.ask()  # a limit was reached after this turn: the synthesis is next, decided once
        if turn.synthesis:
            reason = s.limit.reason if s.limit is not None else None
            text = s.final_text() or f"(the model gave no final answer after reaching the {prompts.LIMIT_NAMES.get(reason, 'limit')})"
            return await self.finish(text, cut_short=True, reason=reason)
        stop = turn.stop_reason
        if stop in _DONE or (stop == "tool_use" and not turn.calls):
            return await self.finish(s.final_text(), cut_short=False, reason=None)
        if stop == "refusal":
            said = s.final_text()
            text = "The model refused to carry out this task." + (f" It said: {said}" if said else "")
            return await self.finish(text, cut_short=False, reason="refusal")
        if stop == "model_context_window_exceeded":
            await self.record(ev.LimitReached(reason="context_window", trimmed=True))
            return await self.ask()
        if stop == "max_tokens" and self._continuations() > self.config.max_continuations:
            return await self.finish(s.final_text(), cut_short=True, reason="max_tokens")
        if stop not in ("tool_use", "pause_turn", "max_tokens"):
            self.log.warning("unknown stop reason; taking the text as the result", stop_reason=stop)
            return await self.finish(s.final_text(), cut_short=False, reason=None)
        limit = self._limit_hit(turn)
        if limit is not None:
            await self.record(limit)
        return await self.ask()

    def _continuations(self) -> int:
        count = 0
        for t in reversed(self.state.turns):
            if t.stop_reason != "max_tokens":
                break
            count += 1
        return count

    def _limit_hit(self, turn: ev.Turn) -> ev.LimitReached | None:
        s, c = self.state, self.config
        skipped = [x for x in turn.calls if x.not_run]
        if skipped:
            return ev.LimitReached(reason=skipped[0].finished.reason or "", not_run=len(skipped))
        if self._no_room_for_a_turn():
            return self._token_limit()
        if s.model_turns() >= c.max_turns:
            return ev.LimitReached(reason="max_turns", limit=c.max_turns)
        return None

    def _no_room_for_a_turn(self) -> bool:
        """Triggered early: another working turn would leave no room for the synthesis' prompt and reserve."""
        s, c = self.state, self.config
        return tb.turn_room(c.token_budget, s.tokens_used(), tb.next_prompt(s)) < tb.TURN_FLOOR

    def _token_limit(self) -> ev.LimitReached:
        return ev.LimitReached(reason="token_budget", used=self.state.tokens_used(), limit=self.config.token_budget)

    async def ask(self) -> None:
        s, c = self.state, self.config
        synthesis = s.limit is not None
        # Each turn's output is bounded by what the budget has left, its prompt counted: a working turn so
        # that a synthesis still fits after it, the synthesis by all that is left.
        prompt, used = tb.next_prompt(s), s.tokens_used()
        if synthesis:
            # At least the floor: the caller gets an answer even when a hand spent past its share (then, and
            # only then, or when the prompt estimate was low, the total can pass the budget).
            room = max(tb.synthesis_room(c.token_budget, used, prompt), tb.SYNTHESIS_FLOOR)
        else:
            room = max(tb.turn_room(c.token_budget, used, prompt), tb.TURN_FLOOR)
        span_cm = traces.turn_span(s.model or getattr(self.brain.model, "id", ""), len(s.turns) + 1, room)
        seen = s.seq  # the events this request was built from: a message after them waits for the next turn
        try:
            with span_cm as span:
                try:
                    message = await self.brain.model.create(
                        system=s.system,
                        tools=s.tools,
                        messages=s.messages(),
                        tool_choice={"type": "none"} if synthesis else None,
                        max_tokens=room,
                        thinking=c.thinking,
                        effort=c.effort,
                        on_text=None if self.brain.on_text is None else functools.partial(self.brain.on_text, s.session_id),
                    )
                except Exception as exc:
                    traces.record_failure(span, exc)
                    raise
                if span is not None:
                    self._turn_spans[len(s.turns) + 1] = span
                    traces.record_response(span, message)
        except ContextWindowExceeded as exc:
            if s.limit is not None and s.limit.trimmed:
                await self.record(ev.SessionFailed(
                    reason=f"the conversation does not fit the model's context window, even trimmed ({exc})",
                    totals=s.totals(),
                ))
                return
            await self.record(ev.LimitReached(reason="context_window", trimmed=True))
            return
        except ModelError as exc:
            await self.record(ev.SessionFailed(reason=str(exc), totals=s.totals()))
            return
        response = ev.ModelResponse.from_message(message)
        response.seen = seen
        await self.record(response)

    async def run_calls(self, turn: ev.Turn) -> None:
        """Run the turn's unfinished calls concurrently (max_parallel), logging each start and finish."""
        s, c = self.state, self.config
        earlier = s.turns[:-1]
        # Decided from earlier turns only, so a woken session makes the same decision.
        allowed = max(0, c.max_tool_calls - s.calls_run(earlier))
        reason = "max_tool_calls"
        # Tokens the calls may spend between them: what is left once the synthesis' prompt (this turn's
        # included) and reserve are kept back. Decided from the log up to this turn, like the rest.
        seen = turn.usage.total
        if tb.calls_room(c.token_budget, s.tokens_used(earlier) + seen, seen + tb.PROMPT_MARGIN) <= 0:
            allowed, reason = 0, "token_budget"
        for index, call in enumerate(turn.calls):
            if index >= allowed and call.finished is None and call.starts == 0:
                limit = c.max_tool_calls if reason == "max_tool_calls" else c.token_budget
                await self.record(ev.ToolCallFinished(
                    call_id=call.call_id,
                    name=call.name,
                    output=prompts.NOT_RUN[reason].format(limit=limit),
                    is_error=True,
                    status=ev.NOT_RUN,
                    reason=reason,
                    duration=0.0,
                ))
        pending = [x for x in turn.calls if x.finished is None]
        for call in pending:
            rule = c.approval_rule(call.name) if call.approval is None and call.starts == 0 else None
            if rule is not None and call.name in s.always:
                rule = None  # a person approved this hand for the rest of the session
            if rule is not None:
                await self.record(ev.ApprovalRequested(call_id=call.call_id, name=call.name, input=call.input, rule=rule))
                await self._relay(call, rule)
        slots = asyncio.Semaphore(c.max_parallel)
        # What each call may spend of what is left, so that worker agents (which cap their own budget by it
        # and report what they spent) cannot together take the session past its limits: an even share of half
        # the tokens left (the other half pays for the results in the synthesis' prompt: an agent's answer is
        # at most the output it spent), and of the tool calls left once these calls themselves are counted.
        n = max(1, len(pending))
        others = s.calls_run() - sum(1 for x in pending if x.ran)
        tokens_left = tb.calls_room(c.token_budget, s.tokens_used(), tb.prompt_after(turn))
        budget = (max(0, tokens_left) // (2 * n), max(0, c.max_tool_calls - others - len(pending)) // n)

        async def one(call) -> None:
            async with slots:
                await self.record(ev.ToolCallStarted(
                    call_id=call.call_id, name=call.name, input=call.run_input, attempt=call.starts + 1,
                ))
                with traces.tool_span(call.name, call.call_id, call.starts, self.brain.client.target,
                                      parent=self._turn_spans.get(len(s.turns))) as span:  # fmt: skip
                    outcome = await self.dispatcher.call(s.session_id, call.call_id, call.name, call.run_input, budget=budget)
                    traces.record_outcome(span, outcome)
                await self.record(outcome.finished(call.call_id, call.name))

        # Calls that need no decision run at once; one waiting for a person starts when it is approved (the log is
        # read every poll, and a decision nudges it); when only waiting calls are left, the session waits.
        running: dict[str, asyncio.Task] = {}
        try:
            while True:
                for call in turn.calls:
                    if call.finished is not None or call.call_id in running:
                        continue
                    if call.waiting and call.name in s.always:  # asked before the person said "always"
                        await self.record(ev.ApprovalDecided(call_id=call.call_id, approved=True, always=True,
                                                             by=f"always approved for {call.name} in this session"))
                    if call.waiting:
                        continue
                    decision = call.approval.decision if call.approval is not None else None
                    if decision is not None and not decision.approved:
                        await self.record(ev.ToolCallFinished(
                            call_id=call.call_id, name=call.name, is_error=True, status="DENIED", duration=0.0,
                            output=f"a person ({decision.by}) denied this call: {decision.reason or 'no reason given'}",
                        ))
                        continue
                    running[call.call_id] = asyncio.create_task(one(call))
                if s.interrupt_pending:
                    await self._interrupt(turn, running)
                    return
                for task in [t for t in running.values() if t.done()]:
                    if not task.cancelled() and (exc := task.exception()) is not None:
                        if isinstance(exc, HandsUnauthenticated):
                            await self.record(ev.SessionFailed(reason=str(exc), totals=s.totals()))
                            return
                        raise exc
                live = [t for t in running.values() if not t.done()]
                if not live and not any(x.finished is None for x in turn.calls):
                    return
                if not live:
                    if not await self._wait_for_decisions(turn):
                        return
                    continue
                self._nudge.clear()
                nudged = asyncio.ensure_future(self._nudge.wait())
                try:
                    await asyncio.wait([*live, nudged], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    nudged.cancel()
        finally:
            for task in running.values():
                task.cancel()
            if running:
                await asyncio.gather(*running.values(), return_exceptions=True)

    async def _interrupt(self, turn: ev.Turn, running: dict[str, asyncio.Task]) -> None:
        """A person interrupted: cancel the calls in flight, give each the result that says so, record it."""
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        await self._writes_settled()
        await self.absorb()
        cancelled = [x for x in turn.calls if x.finished is None]
        for call in cancelled:
            await self.record(ev.ToolCallFinished(call_id=call.call_id, name=call.name, output=ev.CANCELLED_BY_A_PERSON,
                                                  is_error=True, status="CANCELLED", duration=0.0))
        await self.record(ev.CallsInterrupted(call_ids=[x.call_id for x in cancelled], by=self._interrupter()))

    def _interrupter(self) -> str:
        return next((m.by for m in reversed(self.state.said) if m.interrupt), "")

    async def _wait_for_decisions(self, turn: ev.Turn) -> bool:
        """Only calls waiting for a person are left: the session waits, holding no lease.

        False: this brain lets it go (the drive ends with status waiting, for any brain to continue once decided).
        True: a decision came in while this brain waited for one (wait_for_decisions) and it has the lease again.
        """
        s, store, sid, owner = self.state, self.brain.store, self.state.session_id, self.brain.owner
        if s.status != "waiting":
            await self.record(ev.SessionWaiting(calls=[x.call_id for x in turn.calls if x.waiting]))
        self._lease_held = False
        with contextlib.suppress(Exception):
            await store.release_lease(sid, owner)
        await self.absorb()  # a decision may have come in as the session went waiting
        if not _undecided(s) or s.interrupt_pending:
            return await self._take_back()
        if not self.brain.wait_for_decisions:
            self._let_go = True
            return False
        while _undecided(s) and not s.interrupt_pending:
            self._nudge.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), self.brain.poll)
            await self.absorb()
        return await self._take_back()

    async def _take_back(self) -> bool:
        s, store, sid, owner = self.state, self.brain.store, self.state.session_id, self.brain.owner
        if not await store.acquire_lease(sid, owner, self.config.lease_ttl):
            self._let_go = True
            return False  # another brain took it up (the brain service a decision went to): it goes on there
        self._lease_held = True
        await self.absorb()
        if s.status == "waiting" and (not _undecided(s) or s.interrupt_pending):
            await self.record(ev.SessionResumed(by=owner))
        return s.status == "running"

    async def _relay(self, call: ev.Call, rule: str) -> None:
        """A nested brain's request, copied to the root session so the person watching that one sees it."""
        root = self.brain.relay_to
        if not root or root == self.state.session_id:
            return
        from brain.inbox import append_external

        try:
            await append_external(self.brain.store, root, ev.ApprovalRequested(
                call_id=call.call_id, name=call.name, input=call.input, rule=rule, session_id=self.state.session_id))
        except Exception as exc:
            self.log.warning("could not show the approval request on the root session", root=root, error=str(exc))

    async def finish(self, text: str, *, cut_short: bool, reason: str | None) -> None:
        citations = await record_citations(self.brain.store, self.state, text)
        await self.record(ev.SessionFinished(result=text, cut_short=cut_short, reason=reason, totals=self.state.totals(),
                                             citations=citations))

