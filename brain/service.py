"""The BrainService gRPC API: run sessions and stream their events live, look them up, wake and cancel them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import Field, field_validator

from brain import events as ev
from brain import inbox
from brain.adopt import Adopter
from brain.auth import LOCAL, BrainAccess, BrainAuthInterceptor, BrainTenant, check_caps, current_tenant
from brain.config import BrainConfig
from brain.dispatch import HandsUnauthenticated, HandsUnreachable
from brain.events import SessionState
from brain.loop import Brain, LeaseLost, SessionBusy
from brain.model import DEFAULT_MODEL, AnthropicModel, Model
from brain.scripted import ScriptedModel
from brain.sessions import (
    TERMINAL_STATUS,
    AmbiguousSessionId,
    Event,
    SessionInfo,
    SessionNotFound,
    SessionStore,
    open_store,
    resolve_session_id,
)
from brain.v1 import brain_pb2, brain_pb2_grpc
from hands import HandClient
from hands.config import ConfigError, ConfigModel, Duration, Text, whole
from hands.serving import RunningServer, start_server

log = structlog.get_logger("brain.service")

SCRIPTED_PREFIX = "scripted:"
DEFAULT_PORT = 50061
MAX_PAGE_SIZE = 1000
#: how long Cancel waits for a cancelled session to write its end before answering with what the log shows
CANCEL_WAIT = 30.0

_STATUS_TO_PB = {
    "running": brain_pb2.SESSION_STATUS_RUNNING,
    "finished": brain_pb2.SESSION_STATUS_FINISHED,
    "failed": brain_pb2.SESSION_STATUS_FAILED,
    "cancelled": brain_pb2.SESSION_STATUS_CANCELLED,
    "waiting": brain_pb2.SESSION_STATUS_WAITING,
}
#: seconds between reads of the log while a Watch follows a session no brain here drives
WATCH_POLL = 0.25
_PB_TO_STATUS = {v: k for k, v in _STATUS_TO_PB.items()}


class BrainServiceConfig(ConfigModel):
    """Everything `brainhands serve brain` needs, read once from flags and environment in main."""

    env_vars = {
        "gateway": "BRAINHANDS_GATEWAY",
        "sessions": "BRAINHANDS_SESSIONS",
        "model": "BRAINHANDS_MODEL",
        "api_key": "BRAINHANDS_API_KEY",
        "anthropic_api_key": "ANTHROPIC_API_KEY",
        "anthropic_base_url": "ANTHROPIC_BASE_URL",
    }

    # The HandService the brain calls: a gateway or a single hand service.
    gateway: str = Field("", validate_default=True)
    sessions: str | None = None  # session store URL: a SQLite path or postgresql://...; None: the default file
    model: str = DEFAULT_MODEL  # a Claude model id, or scripted:PATH for a scripted model (tests, demos)
    host: Text = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 picks a free port
    api_key: str | None = Field(None, repr=False)  # the key the brain presents to the gateway (BRAINHANDS_API_KEY)
    anthropic_api_key: str | None = Field(None, repr=False)  # ANTHROPIC_API_KEY
    anthropic_base_url: str | None = None  # ANTHROPIC_BASE_URL: a compatible local endpoint works
    limits: BrainConfig = BrainConfig()  # defaults a RunRequest's limits override
    # Tenants (API keys, caps) and TLS from `--config FILE` (brain/auth.py); none: the one local tenant.
    access: BrainAccess = BrainAccess()
    # --adopt: claim running sessions no brain drives (their brain died or stopped) and finish them here (brain/adopt.py).
    adopt: bool = False
    adopt_interval: Duration = 5.0  # seconds between looks for orphaned sessions
    adopt_max: whole(1) = 4  # orphaned sessions this brain drives at once; more wait for a later look or another brain

    @field_validator("gateway")
    @classmethod
    def _gateway_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("required; pass --gateway ADDR or set BRAINHANDS_GATEWAY")
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise ValueError(f"must be a whole number from 0 to 65535, got {value!r}")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if value.startswith(SCRIPTED_PREFIX) and not value[len(SCRIPTED_PREFIX):]:
            raise ValueError("write scripted:PATH, with the path of a model script")
        return value

    @property
    def scripted(self) -> bool:
        return self.model.startswith(SCRIPTED_PREFIX)


class _Models:
    """The service's model, and the Claude models RunRequests ask for, all on one SDK client."""

    def __init__(self, config: BrainServiceConfig, default: Model | None):
        self._config = config
        self._client: anthropic.AsyncAnthropic | None = None
        self._by_id: dict[str, Model] = {}
        self._owned = default is None
        if default is None:
            default = (
                ScriptedModel.from_file(config.model[len(SCRIPTED_PREFIX):])
                if config.scripted
                else AnthropicModel(config.model, client=self._sdk())
            )
        self.default = default

    def _sdk(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self._config.anthropic_api_key, base_url=self._config.anthropic_base_url
            )
        return self._client

    def get(self, model_id: str) -> Model:
        """The model for a request or a woken session; ValueError for an id a client may not choose."""
        if not model_id or model_id == getattr(self.default, "id", None):
            return self.default
        if model_id.startswith("scripted"):
            # A path from a remote client would let it make the brain read any file.
            raise ValueError("model: scripted models are chosen when the brain service starts (--model), not per request")
        if model_id not in self._by_id:
            self._by_id[model_id] = AnthropicModel(model_id, client=self._sdk())
        return self._by_id[model_id]

    def for_session(self, model_id: str) -> Model:
        """The model a session started with, so a wake continues on it; the service's model if that is not allowed."""
        try:
            return self.get(model_id)
        except ValueError:
            return self.default

    async def close(self) -> None:
        if self._owned:
            with contextlib.suppress(Exception):
                await self.default.close()
        if self._client is not None:
            await self._client.close()


class ServiceStopping(Exception):
    """The brain service is shutting down: the session is left running in the log, for another brain to wake."""


_END = object()  # the end-of-stream marker in a follower's queue


class _Live:
    """A session this process drives: the task driving it, and the streams following its events."""

    def __init__(self, session_id: str = ""):
        self.session_id = session_id
        self.brain: Brain | None = None
        self.task: asyncio.Task | None = None
        self.ended = asyncio.Event()
        self.error: BaseException | None = None
        self._queues: set[asyncio.Queue] = set()
        self.on_started: Callable[[_Live], None] | None = None

    def publish(self, event: Event) -> None:
        """The Brain's on_event: hand the event to every follower (it runs in the loop, never blocks)."""
        if not self.session_id:
            self.session_id = event.session_id
            if self.on_started is not None:
                self.on_started(self)
        for queue in self._queues:
            queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        if self.ended.is_set():
            queue.put_nowait(_END)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._queues.discard(queue)

    def end(self, error: BaseException | None = None) -> None:
        self.error = error
        self.ended.set()
        for queue in self._queues:
            queue.put_nowait(_END)


class BrainServicer(brain_pb2_grpc.BrainServiceServicer):
    """BrainService over Brain: each session runs as a task of this process, not of the RPC that started it.

    So a client that disconnects from Run does not stop the session: it can Wake to follow it again,
    or Cancel it. On shutdown the sessions driven here are interrupted without an end in the log,
    so another brain sharing the store can wake them.
    """

    def __init__(
        self,
        *,
        config: BrainServiceConfig,
        store: SessionStore,
        hands: HandClient,
        model: Model | None = None,
        owner: str | None = None,
        closers: list[Callable[[], Awaitable[None]]] | None = None,
        metrics=None,
    ):
        """metrics: a brain.metrics.BrainMetrics that counts the sessions driven here (None: none)."""
        self.config = config
        self.store = store
        self.hands = hands
        self.models = _Models(config, model)
        # One owner for every session of this process: a lease held by anyone else is another brain.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._closers = closers or []
        self._live: dict[str, _Live] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self.metrics = metrics
        self.adopter = Adopter(
            store, self.owner, self._adopt, interval=config.adopt_interval, most=config.adopt_max,
            driving=self._live.__contains__,
        )  # fmt: skip
        self._adopting: asyncio.Task | None = None
        if metrics is not None:
            metrics.track_running(lambda: len(self._live))

    def _on_event(self, live: _Live):
        """The Brain's on_event: to the followers, counted in the metrics first when there are metrics."""
        return live.publish if self.metrics is None else self.metrics.publisher(live.publish)

    def start_adopting(self) -> None:
        """Look for orphaned sessions every adopt_interval and finish them here, until the service closes."""
        if self._adopting is None and not self._closed:
            self._adopting = asyncio.create_task(self.adopter.run())

    def _adopt(self, sid: str, events: list[Event]) -> Awaitable[BaseException | None]:
        """The Adopter's wake: drive the claimed session here; what it awaits ends with the drive."""
        live = self._wake(sid, events, how="orphan")

        async def ended() -> BaseException | None:
            await live.ended.wait()
            return live.error

        return ended()

    def register(self, server: grpc.aio.Server) -> list[str]:
        brain_pb2_grpc.add_BrainServiceServicer_to_server(self, server)
        return [brain_pb2.DESCRIPTOR.services_by_name["BrainService"].full_name]

    # --- RPCs -----------------------------------------------------------------------------------

    async def Run(self, request: brain_pb2.RunRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[brain_pb2.SessionEvent]:
        if not request.task.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "task: must not be empty")
        tenant = _caller()
        try:
            limits = self._limits(request.limits, tenant, request.model)
            approve = tuple(dict.fromkeys((*limits.approve, *tenant.approve, *request.approve)))
            if approve != limits.approve:  # the service's rules, the tenant's, then the run's own
                limits = limits.model_copy(update={"approve": approve})
            limits = self._thinking(limits, request)
            model = self.models.get(request.model)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._refuse_when_closed(context)
        live = _Live()
        live.on_started = lambda started: self._live.__setitem__(started.session_id, started)
        live.brain = Brain(target=self.hands, model=model, store=self.store, config=limits, on_event=self._on_event(live), owner=self.owner)
        queue = live.subscribe()  # before the session starts: the stream sees every event from session_started
        self._start(live, live.brain.run(request.task, tenant=tenant.name))
        async for event in self._follow(live, queue, context, after_seq=0, backlog=[]):
            yield event

    async def Wake(self, request: brain_pb2.WakeRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[brain_pb2.SessionEvent]:
        sid, after = request.session_id, request.after_seq
        if not sid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id: required")
        if after < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"after_seq: must not be negative, got {after}")
        await self._refuse_when_closed(context)
        await self._info(sid, context)  # NOT_FOUND unless the caller's tenant owns it
        live = self._live.get(sid)
        if live is None:
            events = await self._events(sid, context)
            live = self._live.get(sid)  # another RPC may have woken it while the log was read
            if live is None:
                if not events or events[-1].type in TERMINAL_STATUS:
                    for event in events:
                        if event.seq > after:
                            yield to_pb_event(event)
                    return
                await self._check_not_held(sid, context, "wake it there or wait until its lease expires")
                live = self._live.get(sid)
                if live is None:
                    live = self._wake(sid, events)
                    queue = live.subscribe()
                    backlog = [e for e in events if e.seq > after]
                    async for event in self._follow(live, queue, context, after_seq=after, backlog=backlog):
                        yield event
                    return
        queue = live.subscribe()  # first, so nothing appended while the log is read is missed
        backlog = await self._events(sid, context, after_seq=after)
        async for event in self._follow(live, queue, context, after_seq=after, backlog=backlog):
            yield event

    async def GetSession(self, request: brain_pb2.GetSessionRequest, context: grpc.aio.ServicerContext) -> brain_pb2.GetSessionResponse:
        if not request.session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id: required")
        sid = request.session_id
        try:  # a unique start of the id (the short id listings print) names the session too
            sid = await resolve_session_id(self.store, sid)
        except AmbiguousSessionId as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"session_id: {exc}")
        except SessionNotFound:
            pass  # _info says so
        info = await self._info(sid, context)
        response = brain_pb2.GetSessionResponse(session=to_pb_session(info))
        if info.status != "running" and info.last_seq > 0:
            [last] = await self.store.events(info.id, after_seq=info.last_seq - 1)
            response.outcome.CopyFrom(to_pb_outcome(last))
        return response

    async def ListSessions(self, request: brain_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext) -> brain_pb2.ListSessionsResponse:
        size = request.page_size or 50
        if not 0 < size <= MAX_PAGE_SIZE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size: must be from 1 to {MAX_PAGE_SIZE}, got {request.page_size}")
        status = None
        if request.status != brain_pb2.SESSION_STATUS_UNSPECIFIED:
            status = _PB_TO_STATUS.get(request.status)
            if status is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"status: unknown value {request.status}")
        sessions = await self.store.list_sessions(limit=size, status=status, tenant=_caller().name)
        return brain_pb2.ListSessionsResponse(sessions=[to_pb_session(s) for s in sessions])

    async def Cancel(self, request: brain_pb2.CancelRequest, context: grpc.aio.ServicerContext) -> brain_pb2.CancelResponse:
        sid = request.session_id
        if not sid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id: required")
        reason = request.reason.strip() or "cancelled through the BrainService API"
        await self._info(sid, context)  # NOT_FOUND unless the caller's tenant owns it
        live = self._live.get(sid)
        if live is not None:
            await self._cancel_live(live, reason)
        else:
            info = await self._info(sid, context)
            if info.status == "running":
                await self._check_not_held(sid, context, "send Cancel to that brain")
                await self._cancel_undriven(sid, reason, context)
        log.info("session cancel", session_id=sid, reason=reason)
        return brain_pb2.CancelResponse(session=to_pb_session(await self._info(sid, context)))

    async def Decide(self, request: brain_pb2.DecideRequest, context: grpc.aio.ServicerContext) -> brain_pb2.DecideResponse:
        sid = request.session_id
        if not sid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id: required")
        edited = None
        if request.input_json:
            try:
                edited = json.loads(request.input_json)
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input_json: not JSON ({exc})")
            if not isinstance(edited, dict):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input_json: must be a JSON object")
        if not request.approve and not request.reason.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "reason: required when denying; the model reads it")
        await self._session_for_caller(context, sid)
        try:
            decision = await inbox.decide(self.store, sid, request.call_id or None, approved=request.approve,
                                          by=self._caller(context), input=edited, reason=request.reason or None,
                                          always=request.always)
        except (inbox.NothingToDecide, inbox.NotRunning) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info("approval decided", session_id=sid, call_id=decision.call_id, approved=decision.approved)
        await self._go_on(sid)
        return brain_pb2.DecideResponse(call_id=decision.call_id, nested_session_id=decision.session_id or "",
                                        session=to_pb_session(await self._info(sid, context)))

    async def Say(self, request: brain_pb2.SayRequest, context: grpc.aio.ServicerContext) -> brain_pb2.SayResponse:
        sid = request.session_id
        if not sid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id: required")
        if not request.text.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text: must not be empty")
        await self._session_for_caller(context, sid)
        try:
            await inbox.say(self.store, sid, request.text, by=self._caller(context), interrupt=request.interrupt)
        except inbox.NotRunning as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        await self._go_on(sid)
        return brain_pb2.SayResponse(session=to_pb_session(await self._info(sid, context)))

    async def Watch(self, request: brain_pb2.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[brain_pb2.WatchResponse]:
        sid, last = request.session_id, request.after_seq
        if not sid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id: required")
        if last < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"after_seq: must not be negative, got {last}")
        await self._session_for_caller(context, sid)
        # Positional reads of the log, always: a brain here only makes them prompt (its events wake the stream).
        while True:
            live = self._live.get(sid)
            queue = live.subscribe() if live is not None else None
            try:
                info = await self._info(sid, context)
                for event in await self._events(sid, context, after_seq=last):
                    last = event.seq
                    yield brain_pb2.WatchResponse(event=to_pb_event(event))
                if info.status in TERMINAL_STATUS.values() and last >= info.last_seq:
                    return
                with contextlib.suppress(TimeoutError):
                    if queue is not None:
                        await asyncio.wait_for(queue.get(), WATCH_POLL * 4)
                        while not queue.empty():  # only a wake-up: the events themselves are read from the log
                            queue.get_nowait()
                    else:
                        await asyncio.sleep(WATCH_POLL)
            finally:
                if live is not None and queue is not None:
                    live.unsubscribe(queue)

    # --- people in the loop -----------------------------------------------------------------------

    async def _session_for_caller(self, context: grpc.aio.ServicerContext, sid: str) -> SessionInfo:
        """The session, if the caller may see it; NOT_FOUND otherwise (the one place the tenant check goes)."""
        return await self._info(sid, context)

    def _caller(self, context: grpc.aio.ServicerContext) -> str:
        """Who decides or speaks, for the log: the authenticated tenant, and where it called from."""
        return f"tenant {_caller().name} via BrainService ({context.peer()})"

    async def _go_on(self, sid: str) -> None:
        """After a decision or a message: a session driven here reads its log now; a waiting one no brain drives
        is continued here once nothing it waits for is undecided."""
        live = self._live.get(sid)
        if live is not None:
            if live.brain is not None:
                live.brain.nudge(sid)
            return
        if self._closed:
            return
        events = await self.store.events(sid)
        state = SessionState.from_events(sid, events)
        undecided = [c for c in state.calls.values() if c.waiting]
        if state.status != "waiting" or (undecided and not state.interrupt_pending):
            return
        info = await self.store.get_session(sid)
        if info.lease_owner and info.lease_owner != self.owner and (info.lease_expires_at or 0) > time.time():
            return
        self._wake(sid, events)

    # --- sessions driven here -------------------------------------------------------------------

    def _start(self, live: _Live, drive: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await drive
            except asyncio.CancelledError:
                live.end(ServiceStopping(
                    f"the brain service is shutting down; session {live.session_id or '(not started)'} is left"
                    " running in the log: Wake it on a brain that shares the session store"
                ))
                raise
            except Exception as exc:
                if not isinstance(exc, HandsUnreachable | HandsUnauthenticated | SessionBusy | LeaseLost | ValueError):
                    log.exception("session task failed", session_id=live.session_id)
                live.end(exc)
            else:
                live.end()
            finally:
                if live.session_id and self._live.get(live.session_id) is live:
                    del self._live[live.session_id]

        live.task = asyncio.create_task(run())
        self._tasks.add(live.task)
        live.task.add_done_callback(self._tasks.discard)

    def _wake(self, sid: str, events: list[Event], how: str = "wake") -> _Live:
        """Drive a session from its log here. how: the metric's label, wake (asked to) or orphan (adopted)."""
        started = ev.SessionStarted.from_data(events[0].data if events[0].type == ev.SESSION_STARTED else {})
        live = _Live(sid)
        self._live[sid] = live
        live.brain = Brain(
            target=self.hands,
            model=self.models.for_session(started.model),
            store=self.store,
            config=self.config.limits,  # wake() runs the session under the limits its log recorded
            on_event=self._on_event(live),
            owner=self.owner,
        )
        if self.metrics is not None:
            self.metrics.adopted.labels(how).inc()
        if how == "wake":  # an adoption has its own line (brain.adopt)
            log.info("waking session", session_id=sid, last_seq=events[-1].seq)
        self._start(live, live.brain.wake(sid))
        return live

    async def _follow(
        self, live: _Live, queue: asyncio.Queue, context: grpc.aio.ServicerContext, *, after_seq: int, backlog: list[Event]
    ) -> AsyncIterator[brain_pb2.SessionEvent]:
        """The backlog, then the live events, each once and in seq order; the driving error, if any, as the status."""
        last, sent = after_seq, 0
        try:
            for event in backlog:
                if event.seq > last:
                    last, sent = event.seq, sent + 1
                    yield to_pb_event(event)
            while (item := await queue.get()) is not _END:
                if item.seq > last:
                    last, sent = item.seq, sent + 1
                    yield to_pb_event(item)
        finally:
            live.unsubscribe(queue)
            # One line per stream: how far the client got, and whether it stayed to the end.
            log.info(
                "session stream",
                session_id=live.session_id,
                events=sent,
                last_seq=last,
                to_the_end=live.ended.is_set(),
                error=None if live.error is None else str(live.error),
            )
        if live.error is not None:
            code, message = status_of(live.error)
            await context.abort(code, message)

    async def _cancel_live(self, live: _Live, reason: str) -> None:
        """Cancel a session driven here and wait (bounded) until its log has its end."""
        deadline = time.monotonic() + CANCEL_WAIT
        # cancel() is False in the moment before a woken session's loop starts (it is taking the lease),
        # and once the session is ending by itself: try again until it takes or the session has ended.
        while not live.brain.cancel(live.session_id, reason) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(live.ended.wait()), 0.05)
            if live.ended.is_set():
                return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(live.ended.wait()), max(0.0, deadline - time.monotonic()))

    async def _cancel_undriven(self, sid: str, reason: str, context: grpc.aio.ServicerContext) -> None:
        """End the log of a running session no brain drives (its brain stopped): under a lease, like a brain would."""
        if not await self.store.acquire_lease(sid, self.owner, self.config.limits.lease_ttl):
            await self._check_not_held(sid, context, "send Cancel to that brain")
            await context.abort(grpc.StatusCode.ABORTED, f"session {sid} was taken by another brain; try again")
        try:
            state = SessionState.from_events(sid, await self.store.events(sid))
            if state.status == "running":
                ended = ev.SessionCancelled(reason=reason, totals=state.totals())
                await self.store.append(sid, state.seq + 1, ended.TYPE, ended.to_data())
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release_lease(sid, self.owner))

    # --- helpers --------------------------------------------------------------------------------

    def _limits(self, limits: brain_pb2.RunLimits, tenant: BrainTenant = LOCAL, model: str = "") -> BrainConfig:
        overrides: dict[str, Any] = {
            name: getattr(limits, name)
            for name in ("max_turns", "max_parallel", "max_tool_calls", "token_budget")
            if getattr(limits, name) != 0
        }
        if limits.HasField("call_timeout"):
            overrides["call_timeout"] = limits.call_timeout.ToTimedelta().total_seconds()
        try:
            config = self.config.limits.replace(**overrides)
        except ConfigError as exc:
            raise ValueError(f"limits.{exc.key}: {exc.reason}") from None
        # The tenant's caps: a request over one is refused naming it; a default over one is lowered to it.
        lowered = check_caps(tenant, overrides, config.model_dump(), model)
        return config.replace(**lowered) if lowered else config

    @staticmethod
    def _thinking(limits: BrainConfig, request: brain_pb2.RunRequest) -> BrainConfig:
        """The run's thinking, effort and workspace, where it asks for them; ValueError naming the field otherwise."""
        update: dict[str, str] = {}
        if request.thinking:
            if request.thinking not in ("adaptive", "off"):
                raise ValueError(f"thinking: expected 'adaptive' or 'off', got {request.thinking!r}")
            update["thinking"] = request.thinking
        if request.effort:
            if request.effort not in ("low", "medium", "high"):
                raise ValueError(f"effort: expected 'low', 'medium' or 'high', got {request.effort!r}")
            update["effort"] = request.effort
        if request.workspace or request.worker_workspaces:  # validated as config: printable, absolute or a URL
            try:
                checked = limits.replace(workspace=request.workspace, worker_workspaces=request.worker_workspaces)
            except ValueError as exc:
                raise ValueError(str(exc).removeprefix("brain config: ")) from None
            update.update(workspace=checked.workspace, worker_workspaces=checked.worker_workspaces)
        return limits.model_copy(update=update) if update else limits

    async def _events(self, sid: str, context: grpc.aio.ServicerContext, after_seq: int = 0) -> list[Event]:
        try:
            return await self.store.events(sid, after_seq=after_seq)
        except SessionNotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no session {sid!r}")

    async def _info(self, sid: str, context: grpc.aio.ServicerContext) -> SessionInfo:
        """The session, if the caller's tenant owns it; another tenant's is NOT_FOUND in the same words as none."""
        info = await self.store.get_session(sid)
        if info is None or info.tenant != _caller().name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no session {sid!r}")
        return info

    async def _check_not_held(self, sid: str, context: grpc.aio.ServicerContext, advice: str) -> None:
        """FAILED_PRECONDITION, naming the holder, when another brain holds a live lease on the session."""
        info = await self._info(sid, context)
        expires = info.lease_expires_at or 0.0
        if info.lease_owner and info.lease_owner != self.owner and expires > time.time():
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session {sid} is driven by brain {info.lease_owner} (lease for another"
                f" {expires - time.time():.0f}s); {advice}",
            )

    async def _refuse_when_closed(self, context: grpc.aio.ServicerContext) -> None:
        if self._closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the brain service is shutting down")

    async def close(self) -> None:
        """Interrupt the sessions driven here (they stay running in the log, wakeable), then close what it owns."""
        if self._closed:
            return
        self._closed = True
        if self._adopting is not None:
            self._adopting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._adopting
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.models.close()
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                await close()


def _caller() -> BrainTenant:
    """The tenant the auth interceptor authenticated for this call (the local one when none is configured)."""
    return current_tenant.get() or LOCAL


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status a stream ends with when the task driving its session raised."""
    S = grpc.StatusCode
    if isinstance(error, ServiceStopping | HandsUnreachable):
        return S.UNAVAILABLE, str(error)
    if isinstance(error, HandsUnauthenticated | SessionBusy):
        return S.FAILED_PRECONDITION, str(error)
    if isinstance(error, LeaseLost):
        return S.ABORTED, str(error)
    if isinstance(error, SessionNotFound):
        return S.NOT_FOUND, str(error)
    if isinstance(error, ValueError):
        return S.INVALID_ARGUMENT, str(error)
    error_id = uuid.uuid4().hex[:12]
    log.error("session stream ends with INTERNAL", error_id=error_id, error=repr(error))
    return S.INTERNAL, f"the brain failed; see its log for error id {error_id}"


# --- conversions ----------------------------------------------------------------------------------


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def to_pb_event(event: Event) -> brain_pb2.SessionEvent:
    return brain_pb2.SessionEvent(
        session_id=event.session_id,
        seq=event.seq,
        type=event.type,
        timestamp=_timestamp(event.ts),
        data_json=json.dumps(event.data, ensure_ascii=False),
    )


def to_pb_session(info: SessionInfo) -> brain_pb2.Session:
    session = brain_pb2.Session(
        session_id=info.id,
        task=info.task,
        status=_STATUS_TO_PB.get(info.status, brain_pb2.SESSION_STATUS_UNSPECIFIED),
        create_time=_timestamp(info.created_at),
        update_time=_timestamp(info.updated_at),
        last_seq=info.last_seq,
        parent_session_id=info.parent_id or "",
        config_json=json.dumps(info.config),
    )
    # An expired lease is no one's: the session is free to be woken.
    if info.lease_owner and (info.lease_expires_at or 0) > time.time():
        session.lease_owner = info.lease_owner
        session.lease_expire_time.CopyFrom(_timestamp(info.lease_expires_at))
    return session


def to_pb_outcome(last: Event) -> brain_pb2.SessionOutcome:
    ended = ev.SessionEnded.from_data(last.data)
    return brain_pb2.SessionOutcome(
        result=ended.result if last.type == ev.SESSION_FINISHED else "",
        cut_short=bool(ended.cut_short),
        reason=ended.reason or "",
        totals_json=json.dumps(ended.totals),
    )


# --- starting the service -------------------------------------------------------------------------


async def start_brain_service(
    config: BrainServiceConfig, *, model: Model | None = None, store: SessionStore | None = None, metrics=None
) -> RunningServer:
    """Start BrainService (with health and reflection) on config.host:config.port.

    model and store default to what the config names; ones passed in stay the caller's to close.
    Draining the returned server interrupts the sessions driven here and closes what the service opened.
    """
    closers: list[Callable[[], Awaitable[None]]] = []
    if store is None:
        store = await open_store(config.sessions)
        closers.append(store.close)
    hands = HandClient(config.gateway, api_key=config.api_key)
    closers.append(hands.close)
    try:
        servicer = BrainServicer(config=config, store=store, hands=hands, model=model, closers=closers, metrics=metrics)
    except BaseException:
        for close in reversed(closers):
            await close()
        raise
    try:
        running = await start_server(
            servicer.register, host=config.host, port=config.port,
            interceptors=[BrainAuthInterceptor(config.access)], credentials=config.access.tls.server_credentials(),
        )  # fmt: skip
    except BaseException:
        await servicer.close()
        raise
    running.on_drain.append(servicer.close)
    if config.adopt:
        servicer.start_adopting()
    return running
