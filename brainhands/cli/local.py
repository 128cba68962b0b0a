"""`brainhands demo` and `brainhands up`: the whole stack on this machine, with no setup."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import yaml

from hands.cli import CliError

DEMO_WORKSPACE = Path(__file__).resolve().parent.parent / "demo_workspace"  # package data: the demo runs from a wheel
DEMO_MARKER = ".brainhands-demo"


def register(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole stack offline on an example project, with a scripted model (no API key needed)",
        description=(
            "Copies an example project, starts a gateway and the built-in hands on loopback, and has the "
            "orchestrator fan a multi-file change out to one worker per file. The model is scripted, so it "
            "needs no key and no network; the brain, workers, gateway and hands are the real ones."
        ),
    )
    demo.add_argument("--dir", metavar="DIR", default="brainhands-demo",
                      help="where to put the project copy, its service logs and timeline (default ./brainhands-demo)")
    demo.add_argument("--sessions", metavar="URL",
                      help="session store, the one `run` and `sessions` use: a SQLite path, sqlite:///PATH or "
                           "postgresql://... (default $BRAINHANDS_SESSIONS, else ~/.local/state/brainhands/sessions.db)")
    demo.add_argument("--json", action="store_true", help="print events as JSON lines instead of the live view")
    demo.add_argument("--think-time", type=float, default=0.6, metavar="SECONDS",
                      help="seconds the scripted model 'thinks' per reply, so the fan-out is visible (default 0.6)")
    demo.set_defaults(func=_demo)

    up = commands.add_parser(
        "up",
        help="run a gateway, the built-in hands and a brain service on loopback until Ctrl-C",
        description="Start a gateway and the built-in hands (fs on the workspace, sandbox, llm, memory) on free "
                    "loopback ports, and a brain service when ANTHROPIC_API_KEY is set (or BRAINHANDS_MODEL is "
                    "scripted:FILE). It prints each service's address and the gateway's metrics address, and runs "
                    "until Ctrl-C. The gateway is open to this machine with no key unless --config adds tenants.",
    )
    up.add_argument("--config", metavar="FILE", help="gateway config (tenants, quotas, more routes) merged over the local defaults")
    up.add_argument("--workspace", metavar="DIR", default=".", help="the fs hand's root (default: the current directory)")
    up.add_argument("--sessions", metavar="URL", help="session store for the brain service (default $BRAINHANDS_SESSIONS or the SQLite default)")
    up.add_argument("--console", default="127.0.0.1:0", metavar="HOST:PORT",
                    help="where the web console listens (default a free loopback port; 'off' starts none)")
    up.add_argument("--otel", metavar="ENDPOINT",
                    help="send every service's traces to this OTLP/gRPC receiver, e.g. 127.0.0.1:4317 (Jaeger, an "
                         "OpenTelemetry Collector); sets OTEL_EXPORTER_OTLP_ENDPOINT for the services")  # fmt: skip
    up.set_defaults(func=_up)


# -- demo ---------------------------------------------------------------------


def _prepare_demo_dir(target: Path) -> Path:
    if not DEMO_WORKSPACE.is_dir():
        raise CliError(f"the example project is missing ({DEMO_WORKSPACE}); reinstall brainhands")
    if target.exists():
        if not (target / DEMO_MARKER).exists():
            raise CliError(f"{target} exists and is not a previous demo; choose another place with --dir")
        shutil.rmtree(target)
    workspace = target / "workspace"
    shutil.copytree(DEMO_WORKSPACE, workspace, ignore=_BYTECODE)
    (target / DEMO_MARKER).write_text("made by brainhands demo; safe to delete\n")
    # Run inside a git checkout, the demo's copy, logs and timeline stay out of `git status`.
    (target / ".gitignore").write_text("# made by brainhands demo: ignore all of it\n*\n")
    return workspace


#: Bytecode the interpreter may have left next to the example's sources: never part of the project copy.
_BYTECODE = shutil.ignore_patterns("__pycache__", "*.pyc")


def _changes(before: Path, after: Path) -> list[tuple[str, int, int]]:
    """(path, lines removed, lines added) for each file the run changed."""
    changed = []
    for path in sorted(after.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(after)
        old = (before / rel).read_text(errors="replace").splitlines() if (before / rel).exists() else []
        new = path.read_text(errors="replace").splitlines()
        if old != new:
            diff = list(difflib.unified_diff(old, new, lineterm="", n=0))
            removed = sum(1 for d in diff if d.startswith("-") and not d.startswith("---"))
            added = sum(1 for d in diff if d.startswith("+") and not d.startswith("+++"))
            changed.append((str(rel), removed, added))
    return changed


def _demo(args: argparse.Namespace) -> int:
    from hands.logs import configure_logging

    configure_logging(level="warning")
    target = Path(args.dir).resolve()
    workspace = _prepare_demo_dir(target)
    return asyncio.run(_run_demo(args, target, workspace))


async def _run_demo(args, target: Path, workspace: Path) -> int:
    import anthropic
    from rich.console import Console

    from brain import AnthropicModel, Brain, BrainConfig
    from brain.timeline import render_timeline
    from brainhands.cli.run import _open, _session_workspaces_root, _store_name
    from brainhands.cli.sessions import _local_workspace
    from brainhands.demo_model import DEMO_TASK, TEST_COMMAND, outcome_of_tests, start_demo_model
    from brainhands.stack import StackError

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print("[bold]brainhands demo[/] — the model is [bold yellow]scripted[/] (offline, no API key); "
              "the brain, gateway, hands and workers are real processes.")
    err.print(f"project copy: {workspace}")
    model_server = start_demo_model(think_time=args.think_time)
    key = "scripted-demo-key"
    roots = _session_workspaces_root()
    # The session works on its own workspace, a copy of the project; each worker on its own git branch of it.
    env = {"ANTHROPIC_BASE_URL": model_server.base_url, "ANTHROPIC_API_KEY": key,
           "BRAINHANDS_WORKSPACES": str(roots), "BRAINHANDS_WORKSPACE_SOURCES": str(workspace)}
    if shutil.which("bwrap") is None:
        env["BRAINHANDS_SANDBOX_ISOLATION"] = "limits-only"
    stack = None
    store = None
    try:
        try:
            stack = await _start_demo_stack(workspace, env, target / "logs")
        except StackError as exc:
            raise CliError(f"the local stack did not start: {exc}") from None
        if env.get("BRAINHANDS_SANDBOX_ISOLATION") == "limits-only":
            err.print("[yellow]bubblewrap is not usable here:[/] the sandbox runs the demo project's tests with "
                      "limits only (no network or file isolation); install bubblewrap for the real sandbox.")
        err.print(f"gateway {stack.gateway} · hands {', '.join(f'{k} {v}' for k, v in stack.addresses.items() if k != 'gateway')}")
        store = await _open(args.sessions)
        api = anthropic.AsyncAnthropic(base_url=model_server.base_url, api_key=key, max_retries=0)
        model = AnthropicModel(client=api)
        view, on_event = _event_sink(args.json, err)
        brain = Brain(target=stack.gateway, model=model, store=store, on_event=on_event,
                      config=BrainConfig(max_parallel=8, call_timeout=90, workspace=str(workspace),
                                         worker_workspaces=True))
        with view:
            result = await brain.run(DEMO_TASK)
            if hasattr(view, "final"):
                view.final(result)
        await brain.close()
        info = await store.get_session(result.session_id)
        events = await store.events(result.session_id)
        timeline = target / "timeline.html"
        timeline.write_text(render_timeline(info, events))
    finally:
        if store is not None:
            await store.close()
        if stack is not None:
            stack.stop()
        model_server.stop()

    print(result.text)
    made = _local_workspace(result.session_id)  # where the local stack keeps workspaces: roots
    session_tree = made.tree if made is not None else None
    changes = _changes(DEMO_WORKSPACE, session_tree) if session_tree else []
    for path, _, _ in changes:  # the merged change, into the project copy too: look at it there
        (workspace / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(session_tree / path, workspace / path)
    err.print()
    err.print(f"[bold]changed {len(changes)} files[/] (merged from the workers' branches into {session_tree or 'no workspace'};"
              f" copied to {workspace}):")
    for path, removed, added in changes:
        err.print(f"  {path}  [red]-{removed}[/] [green]+{added}[/]")
    tests = _demo_test_run(events)
    if tests is None:
        err.print("[bold red]tests: not run[/] (the session ended before running them)")
    else:
        line = outcome_of_tests(*tests)
        style = "green" if line.startswith("passed") else "red"
        err.print(f"[bold {style}]tests {line}[/] — `{TEST_COMMAND}` in the sandbox, on the merged change")
    err.print(f"timeline: {timeline}   (open it in a browser: every worker is a bar on a time axis)")
    sessions = f" --sessions {args.sessions}" if args.sessions else ""
    err.print(f"session {result.session_id[:12]} in {_store_name(store)}: brainhands sessions show {result.session_id[:12]}{sessions}")
    err.print(f"its change as a patch: brainhands sessions export {result.session_id[:12]} --patch{sessions}")
    err.print()
    err.print("The model was scripted. To do the same with Claude:")
    err.print("  export ANTHROPIC_API_KEY=sk-ant-...")
    err.print(f'  brainhands run "{DEMO_TASK} Then run {TEST_COMMAND} in the sandbox." --workspace {workspace}'
              " --session-workspace --worker-workspaces")
    err.print()
    # The demo's stack is gone when it ends: the console reads its session log through a brain service of its own.
    err.print(f"Look at this session in the web console: brainhands console --sessions {args.sessions or _store_name(store)}"
              "   (then open http://127.0.0.1:8080/ and sign in with any key)")
    return 0 if result.ok and tests is not None and not tests[1] else 1


async def _start_demo_stack(workspace: Path, env: dict[str, str], log_dir: Path):
    """The demo's gateway and fs, llm and sandbox hands; the sandbox with limits only if bubblewrap fails here."""
    from brainhands.stack import StackError, start_local_stack

    try:
        return await start_local_stack(workspace, hands=("fs", "llm", "sandbox"), extra_env=env, log_dir=log_dir)
    except StackError as exc:
        if "bubblewrap" not in str(exc) or env.get("BRAINHANDS_SANDBOX_ISOLATION"):
            raise
    env["BRAINHANDS_SANDBOX_ISOLATION"] = "limits-only"  # installed but not usable (no user namespaces, say)
    return await start_local_stack(workspace, hands=("fs", "llm", "sandbox"), extra_env=env, log_dir=log_dir)


def _demo_test_run(events) -> tuple[str, bool] | None:
    """(output, is_error) of the session's last sandbox_shell call, from its log; None if it made none."""
    outcome = None
    for event in events:
        if event.type == "tool_call_finished" and event.data.get("name") == "sandbox_shell":
            outcome = (event.data.get("output", ""), bool(event.data.get("is_error")))
    return outcome


def _event_sink(as_json: bool, err):
    """A context manager for the display and the brain's on_event callback."""
    if as_json:
        import json

        def print_json(event) -> None:
            print(json.dumps(event.as_dict(), default=str), flush=True)

        return contextlib.nullcontext(), print_json
    from brain.live import LiveView

    view = LiveView(err)
    return view, view.on_event


# -- up -----------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    from hands.logs import configure_logging

    configure_logging(level="warning")
    if args.otel:
        from hands.tracing import normalize_endpoint

        if not args.otel.strip() or any(c.isspace() for c in args.otel):
            raise CliError(f"--otel: expected an endpoint such as 127.0.0.1:4317 or http://collector:4317, got {args.otel!r}")
        # The children inherit it: each service exports its own spans there, as the OpenTelemetry conventions say.
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = normalize_endpoint(args.otel.strip())
    extra: dict = {}
    if args.config:
        try:
            extra = yaml.safe_load(Path(args.config).read_text()) or {}
        except OSError as exc:
            raise CliError(f"cannot read {args.config}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise CliError(f"{args.config} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(extra, dict):
            raise CliError(f"{args.config}: expected a mapping of gateway config keys")
    return asyncio.run(_run_up(args, extra))


async def _run_up(args, extra: dict) -> int:
    from brainhands.stack import StackError, start_brain_service, start_local_stack

    workspace = Path(args.workspace).resolve()
    if not workspace.is_dir():
        raise CliError(f"--workspace {workspace} is not a directory")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        stack = await start_local_stack(workspace, gateway_config=extra)
    except StackError as exc:
        raise CliError(f"the local stack did not start: {exc}") from None
    console = None
    try:
        if os.environ.get("ANTHROPIC_API_KEY") or (os.environ.get("BRAINHANDS_MODEL") or "").startswith("scripted:"):
            try:
                brain = await start_brain_service(stack, sessions=args.sessions or os.environ.get("BRAINHANDS_SESSIONS"))
            except StackError as exc:
                raise CliError(f"the brain service did not start: {exc}") from None
            console = await _start_console(args.console, brain.address, stack.gateway)
        else:
            print("no ANTHROPIC_API_KEY: the brain service is not started (set the key to add it); "
                  "the gateway and hands are up", file=sys.stderr)
        print(f"brainhands is up ({time.monotonic() - started:.1f}s); Ctrl-C stops everything", file=sys.stderr)
        addresses = dict(stack.addresses)
        if console is not None:
            addresses["console"] = console.url
        width = max(len(n) for n in addresses)
        for name, address in addresses.items():
            print(f"  {name:<{width}}  {address}")
        if stack.metrics:
            print(f"  {'metrics':<{width}}  http://{stack.metrics}/metrics")
        print(f"\nexport BRAINHANDS_GATEWAY={stack.gateway}   # then: brainhands hands list · brainhands run \"...\"",
              file=sys.stderr)
        print(f"logs: {stack.workdir}", file=sys.stderr)
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            print(f"traces: OTLP/gRPC to {os.environ['OTEL_EXPORTER_OTLP_ENDPOINT']}", file=sys.stderr)
        sys.stdout.flush()
        dead = asyncio.ensure_future(_first_exit(stack))
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({dead, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if dead.done() and not stop.is_set():
            service = dead.result()
            raise CliError(f"the {service.name} service exited with {service.proc.returncode}:\n{service.tail()}")
        dead.cancel()
        waiter.cancel()
        print("stopping…", file=sys.stderr)
    finally:
        if console is not None:
            await console.stop()
        stack.stop()
    return 0


async def _start_console(listen: str, brain: str, gateway: str):
    """The web console in this process, over the stack's brain service and gateway; None when --console off."""
    if listen == "off":
        return None
    from brainhands.console import ConsoleConfig, start_console
    from brainhands.console.serve import parse_listen

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise CliError(str(exc).replace("--listen", "--console")) from None
    try:
        return await start_console(ConsoleConfig(brain=brain, gateway=gateway), host, port)
    except OSError as exc:
        raise CliError(f"the console cannot listen on {listen}: {exc.strerror or exc}") from None


async def _first_exit(stack):
    while True:
        for service in stack.services:
            if service.proc.poll() is not None:
                return service
        await asyncio.sleep(0.2)
