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
    _session_workspaces_root,
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
    lst.add_argument("--status", choices=["running", "waiting", "finished", "failed", "cancelled"],
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

    approve = sc.add_parser(
        "approve", help="approve a tool call waiting for a person (see `run --approve`)",
        description="Approve a call the session waits for: the one named, or the only one waiting. A nested worker"
                    " agent's request shows on its root session and is decided there with the nested call's id. The"
                    " session then goes on: where a brain waits for the decision (a terminal, a worker agent, the"
                    " brain service) at once; otherwise continue it with `brainhands sessions wake ID`.")
    approve.add_argument("session_id", help=ID_HELP)
    approve.add_argument("call_id", nargs="?", help="the call to decide (default: the only one waiting)")
    approve.add_argument("--input", metavar="JSON", help="run the call with this input instead of the model's")
    approve.add_argument("--always", action="store_true", help="approve every later call to this hand in this session")
    approve.add_argument("--brain", metavar="ADDR", help="decide through the brain service there (default $BRAINHANDS_BRAIN)")
    _sessions_flag(approve)
    approve.set_defaults(func=_decide, approved=True)

    deny = sc.add_parser("deny", help="deny a tool call waiting for a person: the model reads the reason instead")
    deny.add_argument("session_id", help=ID_HELP)
    deny.add_argument("call_id", nargs="?", help="the call to decide (default: the only one waiting)")
    deny.add_argument("--reason", required=True, help="why: the model gets it as the call's error result")
    deny.add_argument("--brain", metavar="ADDR", help="decide through the brain service there (default $BRAINHANDS_BRAIN)")
    _sessions_flag(deny)
    deny.set_defaults(func=_decide, approved=False, input=None, always=False)

    say = sc.add_parser("say", help="tell a running session something: it joins the conversation at the next turn",
                        description="Add a message for the orchestrator; the model reads it at the next turn boundary."
                                    " With --interrupt the calls in flight are cancelled first (their results say"
                                    " 'cancelled by a person'), so the next turn comes at once.")
    say.add_argument("session_id", help=ID_HELP)
    say.add_argument("text", help="what to tell the orchestrator; it joins the conversation at the next turn")
    say.add_argument("--interrupt", action="store_true", help="cancel the calls in flight first")
    say.add_argument("--brain", metavar="ADDR", help="send it through the brain service there (default $BRAINHANDS_BRAIN)")
    _sessions_flag(say)
    say.set_defaults(func=_say)

    export = sc.add_parser(
        "export", help="write a session's change to its workspace as a patch, or as a branch of a git repository",
        description="Write the change a session made to its own workspace (brainhands run --session-workspace) as a "
                    "unified diff against the files it started from (--patch), or commit its files and write that "
                    "commit, with the workspace's history under it, as a branch of a git repository (--branch). "
                    "Without --gateway the workspace is looked up where the local stack keeps them; with --gateway "
                    "(or $BRAINHANDS_GATEWAY) a patch comes from its workspace_diff hand, with $BRAINHANDS_API_KEY: "
                    "only the session's own tenant gets it. --branch always reads the workspace on this machine.",
    )
    export.add_argument("session_id", help=ID_HELP)
    form = export.add_mutually_exclusive_group(required=True)
    form.add_argument("--patch", action="store_true", help="the change as a patch (git apply / patch -p1 take it)")
    form.add_argument("--branch", metavar="NAME",
                      help="commit the session's files and write the commit as branch NAME into --into REPO; for a"
                           " workspace made from a local git repository it sits on top of that repository's HEAD")
    export.add_argument("--into", metavar="REPO",
                        help="with --branch: the git repository to write it into (default: the session's source,"
                             " when that is a local git repository)")
    export.add_argument("--force", action="store_true", help="with --branch: overwrite the branch if REPO has one")
    export.add_argument("-o", "--output", metavar="FILE", help="write the patch to FILE (default: stdout)")
    export.add_argument("--gateway", metavar="ADDR", help="ask the workspace_diff hand through this gateway")
    _sessions_flag(export)
    export.set_defaults(func=_export)

    watch = sc.add_parser("watch", help="watch sessions live on one screen (all running and waiting ones without ids)")
    watch.add_argument("session_ids", nargs="*", metavar="ID",
                       help="sessions to follow (default: every running or waiting session)")
    watch.add_argument("--brain", metavar="ADDR", help="watch through the brain service there (default $BRAINHANDS_BRAIN)")
    watch.add_argument("--json", action="store_true", help="print every event as a JSON line instead")
    watch.add_argument("--until-done", action="store_true", help="stop once every watched session has ended")
    _sessions_flag(watch)
    watch.set_defaults(func=_watch)




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


def _export(args) -> int:
    if args.branch is None and (args.into or args.force):
        raise CliError("--into and --force go with --branch NAME")
    if args.branch is not None and args.output:
        raise CliError("-o/--output is for --patch: --branch writes into a git repository (--into REPO)")

    async def session():
        store = await _open(args.sessions, must_exist=True)
        try:
            return await _session_or_fail(store, args.session_id)
        finally:
            await store.close()

    info = asyncio.run(session())
    sid = info.id
    if args.branch is not None:
        return _export_branch(args, sid, info.task)
    gateway = args.gateway or os.environ.get("BRAINHANDS_GATEWAY") or None
    patch = asyncio.run(_patch_through(gateway, sid)) if gateway else _local_patch(sid)
    if args.output:
        try:
            Path(args.output).write_text(patch, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
        print(Path(args.output).resolve())
    else:
        sys.stdout.write(patch)
    return 0


def _local_patch(session_id: str) -> str:
    workspace = _local_workspace(session_id)
    if workspace is None:
        raise CliError(f"session {session_id} has no workspace under {_session_workspaces_root(create=False)}: it ran without "
                       "--session-workspace, or on a gateway's hands (give --gateway)")
    return workspace.diff(max_bytes=1 << 62)


def _export_branch(args, session_id: str, task: str) -> int:
    """Commit the session's workspace tree and write the commit as branch args.branch into the repository given."""
    if args.gateway:
        raise CliError("--branch writes from the session's workspace on this machine (where the local stack keeps "
                       "them), and a gateway's hands keep theirs on theirs: export a --patch through --gateway and "
                       "apply it in your repository (git apply)")
    workspace = _local_workspace(session_id)
    if workspace is None:
        raise CliError(f"session {session_id} has no workspace under {_session_workspaces_root(create=False)}: it ran "
                       "without --session-workspace, or on a gateway's hands (--branch needs the workspace on this "
                       "machine; a --patch can come through --gateway)")
    name = _branch_name(args.branch)
    repo = _export_repository(args.into, workspace, name)
    ref = f"refs/heads/{name}"
    had = _git_in(repo, "rev-parse", "--verify", "-q", ref, check=False).stdout.strip()
    if had and not args.force:
        raise CliError(f"{repo} already has a branch {name} (at {had[:12]}): give --force to overwrite it, or "
                       "another name")
    summary = " ".join(task.split())
    commit = workspace.snapshot(f"session {session_id}: {summary[:60]}{'…' if len(summary) > 60 else ''}")
    _git_in(repo, "fetch", "-q", "--no-tags", "--no-write-fetch-head", str(workspace.git_dir),
            f"{'+' if args.force else ''}{commit}:{ref}")
    print(f"branch {name} at {commit} in {repo}" + (f" (was {had[:12]})" if had else ""))
    return 0


def _branch_name(name: str) -> str:
    """name if git takes it as a new branch's name (git check-ref-format --branch), else a CliError."""
    import subprocess

    # Run outside any repository: inside one, --branch would also expand "@{-1}" to the branch checked out before.
    done = subprocess.run(["git", "check-ref-format", "--branch", name], cwd=os.sep, capture_output=True, text=True,
                          env={**os.environ, "GIT_CEILING_DIRECTORIES": os.sep})
    if done.returncode != 0 or done.stdout.strip() != name or name.startswith("-"):
        raise CliError(f"--branch {name!r} is not a valid git branch name (git check-ref-format --branch refuses it):"
                       " e.g. brainhands/fix-parser")
    return name


def _export_repository(into: str | None, workspace, name: str) -> Path:
    """The git repository --branch writes into: --into, else the workspace's source when that is a local repository."""
    if into:
        repo = Path(into).resolve()
        if not repo.is_dir() or _git_in(repo, "rev-parse", "--git-dir", check=False).returncode != 0:
            raise CliError(f"--into {into}: not a git repository")
        return repo
    try:
        source = (workspace.git_dir / "brainhands-source").read_text().strip()
    except FileNotFoundError:
        source = ""
    if source and "://" not in source and os.path.lexists(Path(source) / ".git"):
        return Path(source)
    if source and "://" in source:
        came = f"was cloned from {source}"
    elif source:
        came = f"was copied from {source}, which is not a git repository"
    elif workspace.parent:
        came = f"was branched from session {workspace.parent}'s"
    else:
        came = "started empty"
    raise CliError(f"the session's workspace {came}: give --into REPO, the local git repository to write branch "
                   f"{name} into")


def _git_in(repo: Path, *args: str, check: bool = True):
    """git in the user's repository; a failure is a CliError with git's own words."""
    import subprocess

    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if check and done.returncode != 0:
        raise CliError(f"git {args[0]} in {repo} failed: {done.stderr.strip()[:500]}")
    return done


async def _patch_through(gateway: str, session_id: str) -> str:
    import grpc

    from hands import HandClient

    async with HandClient(gateway, api_key=os.environ.get("BRAINHANDS_API_KEY") or None) as client:
        try:
            reply = await client.execute("workspace_diff", {}, session_id=session_id, timeout=60)
        except grpc.aio.AioRpcError as exc:
            raise CliError(f"workspace_diff through {gateway}: {exc.code().name}: {exc.details()}") from None
    if reply.output.startswith("[no change"):
        return ""
    if reply.is_error or reply.output.startswith("["):  # a note, not a patch: no workspace yet
        raise CliError(f"session {session_id}: {reply.output.strip('[]')}")
    return reply.output


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
    workspace = _local_workspace(info.id)
    if workspace is not None:
        changed = ("\n" + workspace.diff(max_bytes=1 << 62)).count("\ndiff --git ")
        print(f"workspace: {workspace.tree} · {changed} file(s) changed · the change: "
              f"brainhands sessions export {info.id[:8]} --patch")
    return 0


def _local_workspace(session_id: str):
    """The session's workspace where the local stack keeps them, or None."""
    from hands.workspaces import SessionWorkspace

    for path in _session_workspaces_root(create=False).glob(f"*/{session_id}"):
        if (path / "git").is_dir():
            return SessionWorkspace(path.parent.name, session_id, path)
    return None


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
    recorded = view.config or {}
    if recorded.get("workspace") or recorded.get("worker_workspaces"):  # its files' source; a branch per worker?
        facts.append(f" · workspace from {recorded.get('workspace') or 'the hands default'}"
                     + (", a branch per worker" if recorded.get("worker_workspaces") else ""))
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
    server = _server_tool_lines(view)
    if server:
        out.print(Text("server tools (run by the model API):", style="bold"))
        for line in server:
            out.print(line, markup=False, highlight=False)
    outcome = view.outcome
    if view.status == "finished":
        out.print(Text("result" + (f" (cut short: {outcome.reason})" if outcome.cut_short else "") + ":", style="bold"))
        out.print(outcome.result, markup=False, highlight=False)
        for line in _citation_lines(view):
            out.print(line, markup=False, highlight=False)
    elif view.status in ("failed", "cancelled"):
        out.print(Text(f"{view.status}: {outcome.reason if outcome.reason is not None else ''}", style="bold"))
    if children:
        one = len(children) == 1
        out.print(Text(f"{len(children)} sub-agent session{'' if one else 's'}, drawn under {'its call' if one else 'their calls'}",
                       style="dim"))


def _citation_lines(view) -> list[str]:
    """The answer's citations as the brain checked them: which name a URL the session saw, which do not."""
    c = view.citations
    if c is None:
        return []
    lines = [f"citations: {len(c.checked)} checked, {len(c.unknown)} unknown"]
    for entry in c.checked:
        lines.append(f"  ok       {_cite(entry)} {entry['url']}")
    for entry in c.unknown:
        lines.append(f"  UNKNOWN  {_cite(entry)} {entry.get('url') or '(no URL)'}: {entry.get('why', '')}")
    return lines


def _cite(entry) -> str:
    return f"[{entry['n']}]" if entry.get("n") is not None else "(cited by the API)"


def _server_tool_lines(view) -> list[str]:
    """Each server tool the model ran (server_tool_use) and what its result block held, turn by turn."""
    lines = []
    for turn in view.turns:
        results = {b.get("tool_use_id"): b for b in turn.content if str(b.get("type", "")).endswith("_tool_result")}
        for block in turn.content:
            if block.get("type") != "server_tool_use":
                continue
            arg = block.get("input", {}).get("query") or block.get("input", {}).get("url") or ""
            result = results.get(block.get("id"))
            content = result.get("content") if result else None
            if isinstance(content, list):
                got = f"{len(content)} results: " + ", ".join(str(r.get("url")) for r in content if isinstance(r, dict))
            elif isinstance(content, dict) and content.get("url"):
                got = f"fetched {content['url']}"
            elif isinstance(content, dict):
                got = f"error: {content.get('error_code', '?')}"
            else:
                got = "no result"
            lines.append(f"  turn {turn.number}: {block.get('name')} {arg!r} -> {got}")
    return lines


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
        # BRAINHANDS_BRAIN_KEY is the brain service's key; without it the gateway's BRAINHANDS_API_KEY is tried
        # (one key for both, the common single-tenant case).
        key = os.environ.get("BRAINHANDS_BRAIN_KEY") or os.environ.get("BRAINHANDS_API_KEY")
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        try:
            reply = await stub.Cancel(
                brain_pb2.CancelRequest(session_id=session_id, reason=reason), timeout=30, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CliError(f"cannot reach the brain service at {address}: is `brainhands serve brain` running there?") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise CliError(f"the brain service at {address} has no session {session_id}") from None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise CliError(f"the brain service at {address} refused the key: set BRAINHANDS_BRAIN_KEY") from None
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


# --- approve, deny, say, watch ----------------------------------------------------------------------------


def _brain_address(args) -> str | None:
    return getattr(args, "brain", None) or os.environ.get("BRAINHANDS_BRAIN") or None


def _decide(args) -> int:
    edited = None
    if args.input is not None:
        try:
            edited = json.loads(args.input)
        except ValueError as exc:
            raise CliError(f"--input: not JSON ({exc})") from None
        if not isinstance(edited, dict):
            raise CliError("--input: the call's input is a JSON object, e.g. '{\"path\": \"notes.md\"}'")
    if not args.approved and not args.reason.strip():
        raise CliError("--reason: say why; the model reads it instead of the call's result")
    address = _brain_address(args)
    if address:
        return asyncio.run(_decide_through_service(address, args, edited))
    from brain.inbox import NothingToDecide, NotRunning, decide, person
    from brain.sessions import SessionNotFound

    async def go():
        store = await _open(args.sessions)
        try:
            await _session_or_fail(store, args.session_id)
            return await decide(store, args.session_id, args.call_id, approved=args.approved, by=person(),
                                input=edited, reason=None if args.approved else args.reason, always=args.always)
        except (NothingToDecide, NotRunning, SessionNotFound) as exc:
            raise CliError(str(exc)) from None
        finally:
            await store.close()

    decision = asyncio.run(go())
    verdict = "approved" if decision.approved else "denied"
    where = f" (in its nested session {decision.session_id})" if decision.session_id else ""
    print(f"session {args.session_id}: call {decision.call_id}{where} {verdict}")
    return 0


def _stub(channel):
    from brain.v1 import brain_pb2_grpc

    return brain_pb2_grpc.BrainServiceStub(channel)


def _service_error(address: str, session_id: str, exc) -> CliError:
    import grpc

    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return CliError(f"cannot reach the brain service at {address}: is `brainhands serve brain` running there?")
    if code == grpc.StatusCode.NOT_FOUND:
        return CliError(f"the brain service at {address} has no session {session_id}")
    return CliError(f"the brain service at {address}: {exc.details()}")


async def _decide_through_service(address: str, args, edited) -> int:
    import grpc

    from brain.v1 import brain_pb2

    request = brain_pb2.DecideRequest(session_id=args.session_id, call_id=args.call_id or "", approve=args.approved,
                                      reason="" if args.approved else args.reason, always=bool(args.always),
                                      input_json="" if edited is None else json.dumps(edited))
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await _stub(channel).Decide(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise _service_error(address, args.session_id, exc) from None
    print(f"session {args.session_id}: call {reply.call_id} {'approved' if args.approved else 'denied'}")
    return 0


def _say(args) -> int:
    if not args.text.strip():
        raise CliError("the message is empty: say what the session should know")
    address = _brain_address(args)
    if address:
        return asyncio.run(_say_through_service(address, args))
    from brain.inbox import NotRunning, person, say
    from brain.sessions import SessionNotFound

    async def go():
        store = await _open(args.sessions)
        try:
            await _session_or_fail(store, args.session_id)
            await say(store, args.session_id, args.text, by=person(), interrupt=args.interrupt)
        except (NotRunning, SessionNotFound) as exc:
            raise CliError(str(exc)) from None
        finally:
            await store.close()

    asyncio.run(go())
    print(f"session {args.session_id}: message added" + (" (interrupting the calls in flight)" if args.interrupt else ""))
    return 0


async def _say_through_service(address: str, args) -> int:
    import grpc

    from brain.v1 import brain_pb2

    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await _stub(channel).Say(brain_pb2.SayRequest(session_id=args.session_id, text=args.text,
                                                           interrupt=args.interrupt), timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise _service_error(address, args.session_id, exc) from None
    print(f"session {args.session_id}: message added" + (" (interrupting the calls in flight)" if args.interrupt else ""))
    return 0


def _watch(args) -> int:
    from brainhands.cli.watch import watch

    return asyncio.run(watch(args, _brain_address(args)))
