"""`brainhands run` and `brainhands sessions wake`: drive a session to its end with a live view, on a gateway or a local stack."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from hands.cli import CliError

NO_KEY = "ANTHROPIC_API_KEY is not set: export it, or try `brainhands demo` which needs no key"


def register(commands) -> None:
    run = commands.add_parser(
        "run", help="run a task with the orchestrator brain and print the result",
        description="Run a task. Without --gateway (and without $BRAINHANDS_GATEWAY) a local stack is started for the "
                    "run: a gateway and the built-in hands (fs on the workspace, sandbox, llm) as child processes on "
                    "loopback, stopped when the run ends. The result goes to stdout, everything else to stderr. "
                    "Ctrl-C stops the run and leaves the session resumable with `brainhands sessions wake`.",
    )
    run.add_argument("task", help="what to do, in words")
    _hands_flags(run)
    run.add_argument("--worker-model", metavar="ID",
                     help="model of the llm_worker hand on the local stack (default $BRAINHANDS_WORKER_MODEL)")
    run.add_argument("--max-parallel", type=int, metavar="N", default=8, help="tool calls in flight at once (default 8)")
    run.add_argument("--max-turns", type=int, metavar="N", default=20, help="model turns before a forced synthesis (default 20)")
    run.add_argument("--max-tool-calls", type=int, metavar="N", default=100, help="tool calls in the session (default 100)")
    run.add_argument("--token-budget", type=int, metavar="N", default=2_000_000, help="model + hand tokens (default 2000000)")
    run.add_argument("--call-timeout", type=float, metavar="SECONDS", default=300.0, help="seconds each tool call may take (default 300)")
    run.add_argument("--lease-ttl", type=float, metavar="SECONDS", default=30.0, help="seconds a crashed brain holds the session (default 30)")
    run.add_argument("--store-retry", type=float, metavar="SECONDS", default=30.0,
                     help="seconds to retry writing the session log while its store is unreachable (default 30)")
    run.add_argument("--server-tools", metavar="NAMES", default="",
                     help="Anthropic server tools the model runs itself instead of the hands: web_search,web_fetch")
    run.add_argument("--approve", action="append", default=[], metavar="GLOB",
                     help="calls to hands matching GLOB (fs_write, fs_*, *) wait for a person's approval before they run;"
                          " repeatable. On a terminal the live view asks; otherwise the run ends with the session waiting:"
                          " decide with `brainhands sessions approve|deny ID`, then `sessions wake ID`")
    run.add_argument("--thinking", choices=("adaptive", "off"), default="off",
                     help="adaptive: the model decides when and how much to think; off: no thinking (default off)")
    run.add_argument("--effort", choices=("low", "medium", "high"),
                     help="how much effort the model puts into each answer (default: the model's own)")
    _model_flag(run)
    _sessions_flag(run)
    _json_flag(run)
    run.set_defaults(func=_run)


def _hands_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", metavar="ADDR",
                   help="gateway (or hand service) address (default $BRAINHANDS_GATEWAY; neither: start a local stack)")
    p.add_argument("--workspace", metavar="DIR", help="the local stack's fs root (default: the current directory)")
    p.add_argument("--session-workspace", action="store_true",
                   help="work on the session's own copy of --workspace DIR (default: the current directory), kept"
                        " in git beside it (with DIR's history when DIR is a git repository) so workspace_diff shows"
                        " the change, instead of on DIR itself; with"
                        " --gateway, DIR is a directory on the hands' machine among their BRAINHANDS_WORKSPACE_SOURCES")
    p.add_argument("--worker-workspaces", action="store_true",
                   help="with a session workspace, give each worker agent's session its own branch of its caller's"
                        " workspace (merged back with workspace_merge) instead of working in its caller's files")
    p.add_argument("--repo", metavar="URL[@REF]",
                   help="give the session its own workspace cloned from this git repository (a branch, tag or commit"
                        " after @); the hands clone it with $BRAINHANDS_WORKSPACE_GIT_TOKEN, which never reaches the"
                        " sandbox; with --gateway the hands there must allow it in their BRAINHANDS_WORKSPACE_REPOS")


def _model_flag(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--model", metavar="ID",
                   help=help or "Claude model id, or scripted:FILE.json for a scripted model (default $BRAINHANDS_MODEL)")


def _sessions_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", metavar="URL",
                   help="session store: a SQLite path, sqlite:///PATH or postgresql://... (default $BRAINHANDS_SESSIONS,"
                        " else ~/.local/state/brainhands/sessions.db)")


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print events and the result as JSON lines on stdout")


# --- pieces shared by run and wake -----------------------------------------------------------------


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
        raise CliError(NO_KEY)
    return AnthropicModel(model_id)


def _gateway(args) -> str | None:
    """The gateway to use, or None to start a local stack; flags that only a local stack can honour are checked."""
    gateway = args.gateway or os.environ.get("BRAINHANDS_GATEWAY") or None
    if gateway:
        source = "--gateway" if args.gateway else "BRAINHANDS_GATEWAY"
        if args.workspace and not getattr(args, "session_workspace", False):
            raise CliError(f"--workspace is for the local stack, but {source} names a gateway whose fs hand has its own root;"
                           " drop one of them")
        if getattr(args, "worker_model", None):
            raise CliError(f"--worker-model is for the local stack, but {source} names a gateway: set"
                           " BRAINHANDS_WORKER_MODEL in its llm hand's environment instead")
    return gateway


def _workspace(args) -> Path:
    workspace = Path(args.workspace or ".").resolve()
    if not workspace.is_dir():
        raise CliError(f"--workspace {args.workspace}: not a directory")
    return workspace


def _session_workspaces_root(create: bool = True) -> Path:
    """Where the local stack keeps session workspaces: beside the session store, if the sandbox can reach it there.

    As root the sandbox runs each command as a uid of its own, which must pass through every directory above a
    tree; when one above the state directory does not let it (root's home is 0700), the system temp directory
    holds them instead: its mode is not ours to change.
    """
    import tempfile

    from brain.sessions import default_sessions_path

    root = Path(default_sessions_path()).parent / "workspaces"
    if os.geteuid() == 0 and any(p.exists() and not p.stat().st_mode & 0o001 for p in root.parents):
        root = Path(tempfile.gettempdir()) / "brainhands-workspaces"
    if create:
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o711)
    return root


def _unreachable(gateway: str, exc: Exception) -> CliError:
    text = str(exc)
    why = "connection refused" if "Connection refused" in text else (re.search(r"\((\w+):", text) or [None, "no answer"])[1]
    return CliError(f"cannot reach the gateway at {gateway} ({why}): is the gateway running there? Start one with"
                    " `brainhands up`, or leave out --gateway and BRAINHANDS_GATEWAY to run on a local stack")


class NoStore(CliError):
    """The SQLite store to read does not exist (reading never creates one)."""


async def _open(url: str | None, *, must_exist: bool = False):
    """The session store of --sessions, else $BRAINHANDS_SESSIONS, else the default file.

    must_exist: for commands that only read or change what is there (sessions list/show/cancel/wake): a SQLite
    file that is not there is one line (a mistyped path), not a new empty database and the folders to it.
    """
    from brain import open_store
    from brain.sessions import default_sessions_path, redacted_url
    from brain.sessions.sqlite import StoreCorrupt

    source = "--sessions" if url else "$BRAINHANDS_SESSIONS" if os.environ.get("BRAINHANDS_SESSIONS") else None
    given = f" (given by {source})" if source else ""
    url = url or os.environ.get("BRAINHANDS_SESSIONS") or None
    if must_exist:
        path = _sqlite_path(url or default_sessions_path())
        if path is not None and not Path(path).exists():
            raise NoStore(f"no session store at {path}{given}: nothing has run with it; check the path, or run"
                          " `brainhands run` or `brainhands demo` first")
    try:
        store = await open_store(url)
    except (ValueError, StoreCorrupt) as exc:  # the stores' own messages name the URL and what to do
        raise CliError(f"{exc}{given}") from None
    except Exception as exc:  # sqlite3, asyncpg and socket errors alike: the store named is not usable
        where = redacted_url(url or default_sessions_path())
        raise CliError(f"cannot open the session store {where}{given}: "
                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    check = getattr(store, "check_integrity", None)  # SQLite: a damaged file is one line here, not a traceback later
    if check is not None:
        try:
            await check()
        except StoreCorrupt as exc:
            await store.close()
            raise CliError(str(exc)) from None
    return store


def _sqlite_path(url: str) -> str | None:
    """The file of a SQLite sessions URL, None for PostgreSQL (or a URL open_store will refuse itself)."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    return None if "://" in url else url


def _store_name(store) -> str:
    return str(getattr(store, "path", None) or "the session store")


async def _session_or_fail(store, session_id: str):
    """The session with this id or unique id prefix (the short id listings print)."""
    from brain.sessions import AmbiguousSessionId, SessionNotFound, resolve_session_id

    try:
        return await store.get_session(await resolve_session_id(store, session_id))
    except AmbiguousSessionId as exc:
        raise CliError(str(exc)) from None
    except SessionNotFound:
        raise CliError(f"no session {session_id} in {_store_name(store)}; see `brainhands sessions list`") from None


@contextlib.asynccontextmanager
async def _hands(args, err) -> AsyncIterator[str]:
    """The gateway address: the one given, or a local stack's, started here and stopped on the way out."""
    gateway = _gateway(args)
    if gateway:
        yield gateway
        return
    from brainhands.stack import StackError, start_local_stack

    workspace = _workspace(args)
    env = {k: os.environ[k] for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "BRAINHANDS_WORKER_MODEL") if os.environ.get(k)}
    if getattr(args, "worker_model", None):
        env["BRAINHANDS_WORKER_MODEL"] = args.worker_model
    if getattr(args, "session_workspace", False):
        env["BRAINHANDS_WORKSPACES"] = str(_session_workspaces_root())
        env["BRAINHANDS_WORKSPACE_SOURCES"] = str(workspace)
    if getattr(args, "repo", None):
        env["BRAINHANDS_WORKSPACES"] = str(_session_workspaces_root())
        url, _, ref = args.repo.rpartition("@")
        env["BRAINHANDS_WORKSPACE_REPOS"] = url if url and "/" not in ref and "://" in url else args.repo
    log_dir = _stack_log_dir()
    try:
        stack = await start_local_stack(workspace, extra_env=env, log_dir=log_dir)
    except StackError as exc:
        raise CliError(f"the local stack did not start: {exc}") from None
    try:
        hands = ", ".join(name for name in stack.addresses if name != "gateway")
        origin = getattr(args, "repo", None) or workspace
        # A repository (a URL, or a directory at the top of one) is cloned with its history; a directory copied.
        made = "cloned from" if getattr(args, "repo", None) or (workspace / ".git").exists() else "copied from"
        where = (f"session workspaces under {env['BRAINHANDS_WORKSPACES']}, {made} {origin}"
                 if "BRAINHANDS_WORKSPACES" in env else f"workspace {workspace}")
        err.print(f"local stack: gateway {stack.gateway} ({hands}) · {where} · logs {log_dir}",
                  markup=False, highlight=False, soft_wrap=True)
        yield stack.gateway
    finally:
        # Synchronous on purpose: nothing (not a second Ctrl-C) may interrupt the stop half-way.
        stack.stop()


def _stack_log_dir(keep: int = 10) -> Path:
    """A fresh folder for this run's service logs under the state directory; only the newest `keep` are kept."""
    from brain.sessions import default_sessions_path

    root = Path(default_sessions_path()).parent / "logs"
    with contextlib.suppress(OSError):
        old = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("run-")), key=lambda p: p.name)
        for stale in old[: max(0, len(old) - keep + 1)]:
            for f in stale.iterdir():
                f.unlink()
            stale.rmdir()
    path = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _display(as_json: bool):
    """(console on stderr, a context manager for the display, the brain's on_event)."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if as_json:
        def print_json(event) -> None:
            print(json.dumps(event.as_dict(), ensure_ascii=False, default=str), flush=True)

        return err, contextlib.nullcontext(), print_json
    from brain.live import LiveView

    view = LiveView(err)
    return err, view, view.on_event


def _resume_hint(args, session_id: str) -> str:
    words = ["brainhands", "sessions", "wake", session_id]
    for flag in ("sessions", "gateway", "workspace"):
        value = getattr(args, flag, None)
        if flag == "workspace" and getattr(args, "session_workspace", False):
            words.append("--session-workspace")
        if value:
            if flag in ("workspace",) or (flag == "sessions" and "://" not in value):
                value = str(Path(value).resolve())
            words += [f"--{flag}", value]
    return shlex.join(words)


async def _drive(args, start: Callable[..., Awaitable], known_session: str | None = None, history=()) -> int:
    """Run a session to its end with the display, a gateway (or local stack) and a store; Ctrl-C stops it resumably.

    start(brain) returns the RunResult. SIGINT/SIGTERM cancel the work: the brain treats a cancellation it did not
    ask for as a shutdown, so the session stays running in its log (lease released) and `sessions wake` continues it.
    """
    from brain import Brain, HandsUnauthenticated, HandsUnreachable, LeaseLost, SessionBusy, SessionNotFound
    from brain.sessions import StoreUnavailable
    from hands.tracing import configure_tracing

    configure_tracing("brainhands-run")  # on only with OTEL_EXPORTER_OTLP_ENDPOINT set (the SDK flushes at exit)

    err, view, on_event = _display(args.json)
    if history and hasattr(view, "replay"):
        view.replay(list(history))
    seen = {"session_id": known_session}

    def record(event) -> None:
        seen["session_id"] = seen["session_id"] or event.session_id
        on_event(event)

    async def body():
        store = await _open(args.sessions)
        try:
            if known_session is not None:
                await _session_or_fail(store, known_session)  # still there: _wake resolved its full id
            async with _hands(args, err) as gateway:
                prompts = getattr(view, "asks", False)  # a live view on a terminal asks the person to decide
                target = gateway
                brain = Brain(target=target, model=args.model_obj, store=store, config=args.config_obj,
                              api_key=os.environ.get("BRAINHANDS_API_KEY") or None, on_event=record,
                              wait_for_decisions=prompts, on_text=getattr(view, "on_text", None))
                if prompts:
                    view.attach(store)
                try:
                    with view:
                        try:
                            result = await start(brain)
                        except HandsUnreachable as exc:
                            raise _unreachable(gateway, exc) from None
                        except (HandsUnauthenticated, LeaseLost, SessionBusy, SessionNotFound) as exc:
                            raise CliError(str(exc)) from None
                        except StoreUnavailable as exc:
                            raise _store_gone(args, seen["session_id"], exc) from None
                        if hasattr(view, "final"):
                            view.final(result)
                    return result
                finally:
                    await brain.close()
                    if not isinstance(target, str):
                        await target.close()
        finally:
            await store.close()

    work = asyncio.ensure_future(body())
    loop = asyncio.get_running_loop()
    caught: list[int] = []

    def stop(signum: int) -> None:
        if not caught:
            caught.append(signum)
            work.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        result = await work
    except asyncio.CancelledError:
        if not caught:
            raise
        sid = seen["session_id"]
        name = "interrupted" if caught[0] == signal.SIGINT else "stopped (SIGTERM)"
        if sid:
            print(f"brainhands: {name}; resume with: {_resume_hint(args, sid)}", file=sys.stderr, flush=True)
        else:
            print(f"brainhands: {name} before the session started; nothing to resume", file=sys.stderr, flush=True)
        return 128 + caught[0]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return _finish(result, args.json)


def _store_gone(args, session_id: str | None, exc: Exception) -> CliError:
    """The store stayed unreachable past --store-retry: the brain stopped, and the log holds all it did."""
    if session_id is None:
        return CliError(f"the session store is unreachable ({exc}); nothing was started: run the task again when it is back")
    return CliError(f"the session store is unreachable ({exc}); session {session_id} stays running in its log,"
                    f" with every call it started: when the store is back, continue it with: {_resume_hint(args, session_id)}")


def _finish(result, as_json: bool) -> int:
    if result.status == "waiting":
        if as_json:
            print(json.dumps({"type": "result", "session_id": result.session_id, "status": "waiting", "text": result.text,
                              "usage": result.usage}, ensure_ascii=False), flush=True)
        print(f"brainhands: session {result.session_id} is {result.text}; decide with `brainhands sessions approve"
              f" {result.session_id} [CALL_ID]` or `sessions deny {result.session_id} [CALL_ID] --reason TEXT`, then"
              f" continue it with `brainhands sessions wake {result.session_id}`", file=sys.stderr)
        return 3
    if as_json:
        print(json.dumps({"type": "result", "session_id": result.session_id, "status": result.status,
                          "text": result.text, "cut_short": result.cut_short, "reason": result.reason,
                          "usage": result.usage,
                          **({"citations": result.citations.to_data()} if result.citations else {})},
                         ensure_ascii=False), flush=True)
    elif result.ok:
        print(result.text, flush=True)
        if result.citations and result.citations.unknown:
            bad = ", ".join(f"[{c['n']}]" if c["n"] is not None else str(c["url"]) for c in result.citations.unknown)
            print(f"brainhands: citations that name no URL the session saw: {bad}", file=sys.stderr)
        if result.cut_short:
            print(f"brainhands: the result was cut short ({result.reason}); session {result.session_id}", file=sys.stderr)
    if not result.ok:
        if not as_json:
            print(f"brainhands: session {result.session_id} {result.status}: {result.text}", file=sys.stderr)
        return 1
    return 0


def _quiet_logs() -> None:
    """Warnings and errors only: the live view (or the JSON events) is what a person reads."""
    from hands.logs import configure_logging

    configure_logging(level="warning")


# --- run and wake ------------------------------------------------------------------------------------


def _run(args) -> int:
    from brain import BrainConfig

    if not args.task.strip():
        raise CliError("the task is empty: say what to do, e.g. brainhands run \"Summarize README.md\"")
    try:
        args.config_obj = BrainConfig(
            max_turns=args.max_turns, max_parallel=args.max_parallel, max_tool_calls=args.max_tool_calls,
            token_budget=args.token_budget, call_timeout=args.call_timeout, lease_ttl=args.lease_ttl,
            store_retry=args.store_retry, server_tools=_server_tools(args.server_tools), approve=tuple(args.approve),
            thinking=args.thinking, effort=args.effort, **_workspace_config(args),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    # Everything a person can get wrong is checked before anything starts.
    args.model_obj = _model(args.model)
    if not _gateway(args):
        _workspace(args)
    _quiet_logs()
    return asyncio.run(_drive(args, lambda brain: brain.run(args.task)))


def _server_tools(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in ("web_search", "web_fetch")]
    if unknown:
        raise CliError(f"--server-tools {','.join(unknown)}: unknown; the server tools are web_search and web_fetch")
    return names


def _workspace_config(args) -> dict:
    """The BrainConfig fields that name the session's workspace to the hands, from --repo / --session-workspace."""
    fields: dict = {}
    if getattr(args, "repo", None):
        fields["workspace"] = args.repo
    elif getattr(args, "session_workspace", False):
        fields["workspace"] = str(Path(args.workspace or ".").resolve())
    if getattr(args, "worker_workspaces", False):
        fields["worker_workspaces"] = True
    return fields


def _recorded_workspace(args, state) -> None:
    """Wake a session's local stack with the workspace it started with (its recorded config says), unless the
    flags name one; the brain sends the recorded source and worker mode with every call itself.

    So a person need not repeat --session-workspace, --repo or --worker-workspaces.
    """
    source = (state.config or {}).get("workspace") or ""
    if source and not (getattr(args, "session_workspace", False) or getattr(args, "repo", None)):
        if "://" in source:
            args.repo = source
        else:
            args.session_workspace = True
            args.workspace = args.workspace or source
    if (state.config or {}).get("worker_workspaces"):
        args.worker_workspaces = True


def _wake(args) -> int:
    from brain import BrainConfig, RunResult, SessionBusy
    from brain.events import SessionState

    gateway = _gateway(args)
    if not gateway:
        _workspace(args)

    async def look():
        store = await _open(args.sessions, must_exist=True)
        try:
            args.session_id = (await _session_or_fail(store, args.session_id)).id
            return await store.events(args.session_id)
        finally:
            await store.close()

    events = asyncio.run(look())
    state = SessionState.from_events(args.session_id, events)
    _recorded_workspace(args, state)
    if state.status not in ("running", "waiting"):  # nothing to continue: say how it ended, start nothing
        print(f"brainhands: session {args.session_id} has already ended ({state.status})", file=sys.stderr)
        return _finish(RunResult.from_state(state), args.json)
    if state.status == "waiting" and any(c.waiting for c in state.calls.values()) and not state.interrupt_pending:
        return _finish(RunResult.from_state(state), args.json)  # nothing to go on with until a person decides
    args.model_obj = _model(args.model or state.model or None)
    args.config_obj = BrainConfig()  # wake() runs the session under the limits its log recorded

    async def wake(brain):
        deadline = time.monotonic() + args.wait
        while True:
            try:
                return await brain.wake(args.session_id)
            except SessionBusy:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(0.5, max(0.05, deadline - time.monotonic())))

    _quiet_logs()
    return asyncio.run(_drive(args, wake, known_session=args.session_id, history=events))


