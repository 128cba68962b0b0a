"""`brainhands sessions watch [ID...]`: many sessions live on one screen, the waiting ones marked with how to decide.

Events come from the session store (positional reads, polled) or, with --brain, from BrainService Watch streams.
Each session's events are folded into its SessionState, which brain.live renders, as for a single run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from hands.cli import CliError

POLL = 0.5  # seconds between reads of the store; also how often the list of running sessions is refreshed


async def watch(args, brain_address: str | None) -> int:
    from rich.console import Console, Group
    from rich.live import Live

    from brain.events import SessionState
    from brain.live import plain_line, render_tree
    from brainhands.cli.run import _open

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    out = Console(highlight=False, soft_wrap=True)
    states: dict[str, SessionState] = {}
    named = list(args.session_ids)
    store = await _open(args.sessions) if not brain_address else None
    channel = None
    if brain_address:
        import grpc

        channel = grpc.aio.insecure_channel(brain_address)

    def show_event(event) -> None:
        state = states.setdefault(event.session_id, SessionState(event.session_id))
        state.apply(event)
        if args.json:
            print(json.dumps(event.as_dict(), ensure_ascii=False, default=str), flush=True)
        elif not out.is_terminal:
            line = plain_line(state, event)
            if line:
                print(f"[{event.session_id[:12]}] {line}", flush=True)

    def screen():
        parts = []
        for state in states.values():
            parts.append(render_tree(state, now=time.time(), height=max(8, out.height // max(1, len(states))),
                                     width=out.width))
        return Group(*parts) if parts else "(no running or waiting sessions)"

    async def ids() -> list[str]:
        if named:
            return named
        if store is not None:
            listed = [s for status in ("running", "waiting") for s in await store.list_sessions(limit=50, status=status)]
            return [s.id for s in listed if s.parent_id is None]
        from brain.v1 import brain_pb2, brain_pb2_grpc

        stub = brain_pb2_grpc.BrainServiceStub(channel)
        found = []
        for status in (brain_pb2.SESSION_STATUS_RUNNING, brain_pb2.SESSION_STATUS_WAITING):
            reply = await stub.ListSessions(brain_pb2.ListSessionsRequest(page_size=50, status=status), timeout=30)
            found += [s.session_id for s in reply.sessions if not s.parent_session_id]
        return found

    async def follow_store(sid: str) -> None:
        from brain.sessions import TERMINAL_STATUS

        last = 0
        while True:
            for event in await store.events(sid, after_seq=last):
                last = event.seq
                show_event(event)
            if states.get(sid) is not None and states[sid].status in TERMINAL_STATUS.values():
                return
            await asyncio.sleep(POLL)

    async def follow_service(sid: str) -> None:
        import grpc

        from brain.sessions import Event
        from brain.v1 import brain_pb2, brain_pb2_grpc

        stub = brain_pb2_grpc.BrainServiceStub(channel)
        try:
            async for reply in stub.Watch(brain_pb2.WatchRequest(session_id=sid)):
                e = reply.event
                show_event(Event(e.session_id, e.seq, e.type, json.loads(e.data_json or "{}"),
                                 e.timestamp.ToNanoseconds() / 1e9))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise CliError(f"the brain service at {brain_address} has no session {sid}") from None
            raise CliError(f"the brain service at {brain_address}: {exc.details()}") from None

    followers: dict[str, asyncio.Task] = {}
    live = Live(console=out, get_renderable=screen, refresh_per_second=4, transient=False) if (
        out.is_terminal and not args.json) else contextlib.nullcontext()
    try:
        if named and store is not None:
            from brainhands.cli.run import _session_or_fail

            for sid in named:
                await _session_or_fail(store, sid)
        with live:
            while True:
                for sid in await ids():
                    if sid not in followers:
                        followers[sid] = asyncio.create_task(follow_store(sid) if store is not None else follow_service(sid))
                for task in followers.values():
                    if task.done() and task.exception() is not None:
                        raise task.exception()
                if (named or args.until_done) and followers and all(t.done() for t in followers.values()):
                    break
                if not followers and not out.is_terminal and args.until_done:
                    err.print("(no running or waiting sessions)")
                    break
                await asyncio.sleep(POLL)
    finally:
        for task in followers.values():
            task.cancel()
        await asyncio.gather(*followers.values(), return_exceptions=True)
        if store is not None:
            await store.close()
        if channel is not None:
            await channel.close()
    return 0
