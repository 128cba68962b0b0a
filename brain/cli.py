"""Commands for the brain: run a task, list and wake sessions."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from brainhands.cli import CliError


def register(commands, serve_commands) -> None:
    run = commands.add_parser("run", help="run a task with the orchestrator brain and print the result")
    run.add_argument("task", help="what to do, in words")
    run.add_argument("--gateway", help="gateway or hand service address (default $BRAINHANDS_GATEWAY)")
    run.add_argument("--max-parallel", type=int, default=8, help="tool calls in flight at once (default 8)")
    run.add_argument("--max-turns", type=int, default=20, help="model turns before a forced synthesis (default 20)")
    run.add_argument("--max-tool-calls", type=int, default=100, help="tool calls in the session (default 100)")
    run.add_argument("--token-budget", type=int, default=2_000_000, help="model + hand tokens (default 2000000)")
    run.add_argument("--call-timeout", type=float, default=300.0, help="seconds each tool call may take (default 300)")
    run.add_argument("--lease-ttl", type=float, default=30.0, help="seconds a crashed brain holds the session (default 30)")
    _common(run)
    run.set_defaults(func=_run)

    sessions = commands.add_parser("sessions", help="list or wake brain sessions")
    sc = sessions.add_subparsers(dest="sessions_command", metavar="ACTION")
    sessions.set_defaults(func=lambda args: sessions.print_help() or 2)
    lst = sc.add_parser("list", help="list recent sessions, newest first")
    lst.add_argument("--sessions", help="session store: a SQLite path or URL (default $BRAINHANDS_SESSIONS)")
    lst.add_argument("--status", choices=["running", "finished", "failed", "cancelled"])
    lst.add_argument("--limit", type=int, default=20)
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_list)
    wake = sc.add_parser("wake", help="continue a session from its log (after a crash or a stop)")
    wake.add_argument("session_id")
    wake.add_argument("--gateway", help="gateway or hand service address (default $BRAINHANDS_GATEWAY)")
    wake.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="if another brain holds the session, wait up to this long for its lease to expire")
    _common(wake)
    wake.set_defaults(func=_wake)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model id, or scripted:FILE.json for a scripted model (default $BRAINHANDS_MODEL)")
    p.add_argument("--sessions", help="session store: a SQLite path or URL (default $BRAINHANDS_SESSIONS)")
    p.add_argument("--json", action="store_true", help="print events and the result as JSON lines on stdout")


def _model(model_id: str | None):
    from brain import AnthropicModel, ScriptedModel
    from brain.model import DEFAULT_MODEL

    model_id = model_id or os.environ.get("BRAINHANDS_MODEL") or DEFAULT_MODEL
    if model_id.startswith("scripted:"):
        try:
            return ScriptedModel.from_file(model_id[len("scripted:"):])
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if not os.environ.get("ANTHROPIC_API_KEY") and not os.environ.get("ANTHROPIC_AUTH_TOKEN"):
        raise CliError("no Anthropic API key: set ANTHROPIC_API_KEY, or use --model scripted:FILE.json")
    return AnthropicModel(model_id)


def _gateway(args) -> str:
    gateway = args.gateway or os.environ.get("BRAINHANDS_GATEWAY")
    if not gateway:
        raise CliError("no gateway: pass --gateway ADDR or set BRAINHANDS_GATEWAY (start one with `brainhands up`)")
    return gateway


async def _open(url: str | None):
    from brain import open_store

    try:
        return await open_store(url or os.environ.get("BRAINHANDS_SESSIONS"))
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot open the session store: {exc}") from None


def _printer(as_json: bool):
    stream = sys.stdout if as_json else sys.stderr

    def on_event(event) -> None:
        print(json.dumps(event.as_dict(), ensure_ascii=False), file=stream, flush=True)

    return on_event


def _finish(result, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"type": "result", "session_id": result.session_id, "status": result.status,
                          "text": result.text, "cut_short": result.cut_short, "reason": result.reason,
                          "usage": result.usage}, ensure_ascii=False), flush=True)
    elif result.ok:
        print(result.text, flush=True)
        if result.cut_short:
            print(f"brainhands: the result was cut short ({result.reason}); session {result.session_id}", file=sys.stderr)
    if not result.ok:
        if not as_json:
            print(f"brainhands: session {result.session_id} {result.status}: {result.text}", file=sys.stderr)
        return 1
    return 0


def _brain_errors():
    from brain import HandsUnauthenticated, HandsUnreachable, LeaseLost, SessionBusy, SessionNotFound

    return (HandsUnauthenticated, HandsUnreachable, LeaseLost, SessionBusy, SessionNotFound)


def _run(args) -> int:
    from brain import Brain, BrainConfig

    try:
        config = BrainConfig(
            max_turns=args.max_turns, max_parallel=args.max_parallel, max_tool_calls=args.max_tool_calls,
            token_budget=args.token_budget, call_timeout=args.call_timeout, lease_ttl=args.lease_ttl,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    gateway = _gateway(args)
    model = _model(args.model)

    async def go():
        store = await _open(args.sessions)
        brain = Brain(target=gateway, model=model, store=store, config=config,
                      api_key=os.environ.get("BRAINHANDS_API_KEY") or None, on_event=_printer(args.json))
        try:
            return await brain.run(args.task)
        finally:
            await brain.close()
            await store.close()

    try:
        result = asyncio.run(go())
    except _brain_errors() as exc:
        raise CliError(str(exc)) from None
    return _finish(result, args.json)


def _wake(args) -> int:
    from brain import Brain, SessionBusy

    gateway = _gateway(args)

    async def go():
        store = await _open(args.sessions)
        try:
            info = await store.get_session(args.session_id)
            if info is None:
                raise CliError(f"no session {args.session_id} in {getattr(store, 'path', 'the store')}; see `brainhands sessions list`")
            started = next(iter(await store.events(args.session_id)), None)
            recorded = started.data.get("model") if started else None
            model = _model(args.model or recorded)
            brain = Brain(target=gateway, model=model, store=store,
                          api_key=os.environ.get("BRAINHANDS_API_KEY") or None, on_event=_printer(args.json))
            deadline = time.monotonic() + args.wait
            try:
                while True:
                    try:
                        return await brain.wake(args.session_id)
                    except SessionBusy:
                        if time.monotonic() >= deadline:
                            raise
                        await asyncio.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
            finally:
                await brain.close()
        finally:
            await store.close()

    try:
        result = asyncio.run(go())
    except _brain_errors() as exc:
        raise CliError(str(exc)) from None
    return _finish(result, args.json)


def _list(args) -> int:
    async def go():
        store = await _open(args.sessions)
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
