"""`brainhands sessions`: list, show, wake and cancel brain sessions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from brainhands.cli.run import (
    NoStore,
    _hands_flags,
    _json_flag,
    _model_flag,
    _open,
    _session_or_fail,
    _sessions_flag,
    _wake,
)
from hands.cli import CliError

CANCEL_HELP = """\
How a session is cancelled depends on who drives it:
  - with --brain ADDR (or $BRAINHANDS_BRAIN), the BrainService there cancels
    it: a session it drives stops at once (its calls in flight are cancelled)
    and its log ends with session_cancelled;
  - without a brain service, a session no brain drives any more (its brain
    stopped or crashed and its lease expired) is marked cancelled in the log;
  - a session another process drives right now (its lease is live) is left
    alone: cancel it through that brain's service, or press Ctrl-C where
    `brainhands run` shows it (it can be woken later);
  - a session that has already ended is not changed.
"""


ID_HELP = "the session's id, or the start of it that no other session shares (the short id listings print)"


def register(commands) -> None:
    sessions = commands.add_parser("sessions", help="list, show, wake or cancel brain sessions")
    sc = sessions.add_subparsers(dest="sessions_command", metavar="ACTION")
    sessions.set_defaults(func=lambda args: sessions.print_help() or 2)

    lst = sc.add_parser("list", help="list recent sessions, newest first")
    _sessions_flag(lst)
    lst.add_argument("--status", choices=["running", "finished", "failed", "cancelled"],
                     help="only the sessions with this status (default: all)")
    lst.add_argument("--limit", type=int, default=20, metavar="N", help="number of sessions to list, newest first (default 20)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_list)

    show = sc.add_parser("show", help="show a session: task, status, turns with their tool calls, result")
    show.add_argument("session_id", help=ID_HELP)
    show.add_argument("--html", metavar="FILE", help="write the session's timeline (one self-contained HTML page) to FILE")
    _sessions_flag(show)
    show.add_argument("--json", action="store_true", help="print the session's events as JSON lines")
    show.set_defaults(func=_show)

    wake = sc.add_parser(
        "wake", help="continue a session from its log (after Ctrl-C, a crash or a stop)",
        description="Continue a session where its log ends: finished tool calls are not run again, calls that were "
                    "started and not finished are re-issued. Like `run`, it starts a local stack unless a gateway is given.",
    )
    wake.add_argument("session_id", help=ID_HELP)
    _hands_flags(wake)
    wake.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="if another brain holds the session, seconds to wait for its lease to expire (default 0)")
    _model_flag(wake, "model id (default: the one the session started with)")
    _sessions_flag(wake)
    _json_flag(wake)
    wake.set_defaults(func=_wake)

    cancel = sc.add_parser("cancel", help="stop a session (see --help for who can stop what)",
                           description=CANCEL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    cancel.add_argument("session_id", help=ID_HELP)
    cancel.add_argument("--brain", metavar="ADDR", help="the brain service driving the session (default $BRAINHANDS_BRAIN)")
    cancel.add_argument("--reason", default="", help="why, recorded in the log")
    _sessions_flag(cancel)
    cancel.set_defaults(func=_cancel)




# --- list, show, cancel --------------------------------------------------------------------------------


def _list(args) -> int:
    async def go():
        try:
            store = await _open(args.sessions, must_exist=True)
        except NoStore:
            if args.sessions or os.environ.get("BRAINHANDS_SESSIONS"):
                raise
            return []  # the default store is made by the first run: nothing has run yet
        try:
            return await store.list_sessions(limit=args.limit, status=args.status)
        finally:
            await store.close()

    sessions = asyncio.run(go())
    if args.json:
        print(json.dumps([{"id": s.id, "task": s.task, "status": s.status, "created_at": s.created_at,
                           "updated_at": s.updated_at, "events": s.last_seq, "parent_id": s.parent_id}
                          for s in sessions], indent=2))
        return 0
    for s in sessions:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_at))
        task = " ".join(s.task.split())
        print(f"{s.id}  {when}  {s.status:<9}  {task[:60]}{'…' if len(task) > 60 else ''}")
    if not sessions:
        print("(no sessions)", file=sys.stderr)
    return 0


def _show(args) -> int:
    async def go():
        store = await _open(args.sessions, must_exist=True)
        try:
            info = await _session_or_fail(store, args.session_id)
            args.session_id = info.id
            events = await store.events(args.session_id)
            page = None
            if args.html:
                from brain.timeline import load_timeline

                page = await load_timeline(store, args.session_id)
            from brain.timeline import session_tree

            # The whole tree under the session: each sub-session with its own calls, depth first.
            children = [(depth, sub, await store.events(sub.id)) for depth, sub in await session_tree(store, args.session_id)]
            return info, events, page, children
        finally:
            await store.close()

    info, events, page, children = asyncio.run(go())
    if page is not None:
        path = Path(args.html)
        try:
            path.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {args.html}: {exc.strerror}") from None
        print(path.resolve())
        return 0
    if args.json:
        for event in events:
            print(json.dumps(event.as_dict(), ensure_ascii=False, default=str))
        return 0
    _print_session(info, events, children)
    return 0


def _print_session(info, events, children=()) -> None:
    from rich.console import Console
    from rich.text import Text
    from rich.tree import Tree

    from brain.events import SessionState
    from brain.humanize import format_duration
    from brain.live import render_tree
    from brain.tracing import earlier_trace

    view = SessionState.from_events(info.id, events)
    out = Console(highlight=False, soft_wrap=False)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created_at))
    facts = Text(f"id {info.id} · started {started}", style="dim")
    if view.ended_at is not None:
        facts.append(f" · took {format_duration(view.elapsed(view.ended_at))}")
    elif info.status == "running":
        held = info.lease_owner and (info.lease_expires_at or 0) > time.time()
        facts.append(f" · driven by {info.lease_owner}" if held else " · no brain drives it: `brainhands sessions wake` continues it")
    if view.model:
        facts.append(f" · model {view.model}")
    if info.parent_id:
        facts.append(f" · sub-session of {info.parent_id}")
    trace = earlier_trace(events)
    if trace:  # the OpenTelemetry trace of the session's first run (a wake's trace links to it)
        facts.append(f" · trace {trace['trace_id']}")
    # Each sub-agent's own session is drawn under the call that started it, its own sub-agents under its calls.
    by_parent: dict[str, list] = {}
    for _, child, child_events in children:
        by_parent.setdefault(child.parent_id or "", []).append((child, child_events))

    def tree_of(state, session_status):
        nested: dict[str, list] = {}
        for child, child_events in by_parent.get(state.session_id, ()):
            child_state = SessionState.from_events(child.id, child_events)
            head = Text(f"sub-agent {child.id[:12]} · {child.status} · {' '.join(child.task.split())[:60]}", style="bold")
            below = Tree(head, guide_style="dim")
            below.add(tree_of(child_state, child.status))
            nested.setdefault(_starter(state, child), []).append(below)
        return render_tree(state, now=state.ended_at or time.time(), width=out.width, live=False, expand_all=True,
                           status=session_status, nested=nested)

    out.print(tree_of(view, info.status))
    out.print(facts)
    outcome = view.outcome
    if view.status == "finished":
        out.print(Text("result" + (f" (cut short: {outcome.reason})" if outcome.cut_short else "") + ":", style="bold"))
        out.print(outcome.result, markup=False, highlight=False)
    elif view.status in ("failed", "cancelled"):
        out.print(Text(f"{view.status}: {outcome.reason if outcome.reason is not None else ''}", style="bold"))
    if children:
        one = len(children) == 1
        out.print(Text(f"{len(children)} sub-agent session{'' if one else 's'}, drawn under {'its call' if one else 'their calls'}",
                       style="dim"))


def _starter(state, child) -> str:
    """The id of the call in state that was running when the child session began (the shortest such call)."""
    running = [(((c.finished_at or float("inf")) - c.started_at), c.call_id) for c in state.calls.values()
               if c.started_at is not None and c.started_at <= child.created_at <= (c.finished_at or float("inf"))]
    return min(running)[1] if running else ""

def _cancel(args) -> int:
    brain = args.brain or os.environ.get("BRAINHANDS_BRAIN")
    if brain:
        return asyncio.run(_cancel_through_service(brain, args.session_id, args.reason))
    return asyncio.run(_cancel_in_store(args))


async def _cancel_through_service(address: str, session_id: str, reason: str) -> int:
    import grpc

    from brain.v1 import brain_pb2, brain_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = brain_pb2_grpc.BrainServiceStub(channel)
        try:
            reply = await stub.Cancel(brain_pb2.CancelRequest(session_id=session_id, reason=reason), timeout=30)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CliError(f"cannot reach the brain service at {address}: is `brainhands serve brain` running there?") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise CliError(f"the brain service at {address} has no session {session_id}") from None
            raise CliError(f"the brain service at {address} did not cancel {session_id}: {exc.details()}") from None
    status = brain_pb2.SessionStatus.Name(reply.session.status).removeprefix("SESSION_STATUS_").lower()
    print(f"session {session_id}: {status}")
    return 0


async def _cancel_in_store(args) -> int:
    from brain.events import SessionCancelled, SessionState

    store = await _open(args.sessions, must_exist=True)
    try:
        info = await _session_or_fail(store, args.session_id)
        sid = info.id
        if info.status != "running":
            print(f"session {sid} is not running ({info.status}); nothing to cancel")
            return 0
        owner = f"brainhands-cancel:{os.getpid()}"
        if not await store.acquire_lease(sid, owner, 30.0):
            info = await store.get_session(sid)
            left = max(0.0, (info.lease_expires_at or 0) - time.time())
            raise CliError(
                f"session {sid} is being driven by {info.lease_owner} (lease for another {left:.0f}s): cancel it through"
                " that brain's service with --brain ADDR, or press Ctrl-C where `brainhands run` shows it", exit_code=1)
        try:
            state = SessionState.from_events(sid, await store.events(sid))
            if state.status == "running":
                reason = args.reason or "cancelled with `brainhands sessions cancel` (no brain was driving it)"
                ended = SessionCancelled(reason=reason, totals=state.totals())
                await store.append(sid, state.seq + 1, ended.TYPE, ended.to_data())
        finally:
            with contextlib.suppress(Exception):
                await store.release_lease(sid, owner)
    finally:
        await store.close()
    print(f"session {sid}: cancelled")
    return 0
