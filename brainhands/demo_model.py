"""The demo's scripted model: a rule-based stand-in for Claude, served over the Messages API.

It plays both parts of `brainhands demo` — the orchestrator and the llm_worker hands — by
reading each request the way the model would: which tools it was offered, what the last
tool results say. So the fan-out is decided at run time from what grep finds, and the
brain and the workers run exactly the code they run against the real API.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

from brainhands.scripted_api import ScriptedMessagesAPI, text_reply, tool_reply

DEMO_TASK = (
    "datetime.utcnow() is deprecated since Python 3.12. Replace every use of it in this project with "
    "the timezone-aware datetime.now(timezone.utc), fixing each file's imports, and summarize what changed."
)

_GREP_PATTERN = r"\butcnow\b"
_FILE_RE = re.compile(r"^([^:\n]+\.py):\d+:", re.MULTILINE)
_WORKER_TASK_RE = re.compile(r"in the file (\S+\.py)")


def _last_user_blocks(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return []
    content = messages[-1].get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _tool_outputs(body: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(text, is_error) of each tool_result in the newest user message."""
    out = []
    for block in _last_user_blocks(body):
        if block.get("type") != "tool_result":
            continue
        content = block.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append((content or "", bool(block.get("is_error"))))
    return out


def _turn(body: Mapping[str, Any]) -> int:
    return sum(1 for m in body.get("messages") or [] if m.get("role") == "assistant")


def _first_user_text(body: Mapping[str, Any]) -> str:
    for m in body.get("messages") or []:
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _tool_names(body: Mapping[str, Any]) -> set[str]:
    return {t.get("name") for t in body.get("tools") or []}


#: The demo project's tests, run in the sandbox on the merged change (standard library only: nothing to install).
TEST_COMMAND = "python3 -m unittest discover -s tests"
_OWN_WORKSPACE = "worked in its own workspace"


def _calls_so_far(body: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], str, bool]]:
    """(tool name, input, result text, is_error) of every tool call in the conversation, oldest first."""
    uses: dict[str, tuple[str, dict[str, Any]]] = {}
    out = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                uses[block.get("id", "")] = (block.get("name", ""), block.get("input") or {})
            elif block.get("type") == "tool_result" and block.get("tool_use_id") in uses:
                text = block.get("content")
                if isinstance(text, list):
                    text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
                name, tool_input = uses[block["tool_use_id"]]
                out.append((name, tool_input, text or "", bool(block.get("is_error"))))
    return out


def orchestrator_reply(body: Mapping[str, Any]) -> dict[str, Any]:
    """The next step, from what has been done so far: grep, one worker per file, merge their branches, test."""
    tools = _tool_names(body)
    done = _calls_so_far(body)
    called = {name for name, *_ in done}
    if "fs_grep" not in tools or "llm_worker" not in tools:
        return text_reply(_summary(done), input_tokens=900, output_tokens=180)
    if "fs_grep" not in called:
        return tool_reply(
            [("fs_grep", {"pattern": _GREP_PATTERN, "path": ".", "glob": "*.py"})],
            text="First I'll find every file that calls utcnow, then give each file to its own worker.",
            input_tokens=1200, output_tokens=60,
        )
    if "llm_worker" not in called:
        grep_output = "\n".join(text for name, _, text, _ in done if name == "fs_grep")
        files = sorted(set(_FILE_RE.findall(grep_output)))
        if not files:
            return text_reply("No file in this project calls datetime.utcnow(); nothing to change.")
        calls = [
            ("llm_worker", {
                "task": (
                    f"Objective: in the file {path}, replace every datetime.utcnow() with the timezone-aware "
                    "datetime.now(timezone.utc) (a bare datetime.utcnow passed as a callable becomes "
                    "lambda: datetime.now(timezone.utc)), and add timezone to the file's datetime import."
                ),
                "context": f"grep found these lines:\n{grep_output}",
                "output_format": "One line per change: LINE: old -> new. Nothing else.",
                "tools": ["fs_read", "fs_edit"],
            })
            for path in files
        ]
        return tool_reply(
            calls,
            text=f"{len(files)} files use utcnow. One worker per file, in parallel; each edits only its own file.",
            input_tokens=1500, output_tokens=90 * len(files),
        )
    branched = any(_OWN_WORKSPACE in text for name, _, text, _ in done if name == "llm_worker")
    if branched and "workspace_merge" in tools and "workspace_merge" not in called:
        return tool_reply([("workspace_merge", {})],
                          text="Each worker changed its own branch of the project: merging them into mine.",
                          input_tokens=1800, output_tokens=40)
    if "sandbox_shell" in tools and "sandbox_shell" not in called:
        return tool_reply([("sandbox_shell", {"command": TEST_COMMAND, "timeout": 60})],
                          text="Now the project's tests, on the merged change, in the sandbox.",
                          input_tokens=2000, output_tokens=40)
    return text_reply(_summary(done), input_tokens=2500, output_tokens=220)


def outcome_of_tests(text: str, is_error: bool) -> str:
    """One line for a unittest run's output: "passed (6 tests)", "FAILED (failures=2) of 6 tests", ..."""
    ran = re.search(r"^Ran (\d+) tests?", text, re.MULTILINE)
    count = f"{ran.group(1)} tests" if ran else "no test count"
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("[")]
    last = lines[-1].strip() if lines else ""
    if not is_error and last.startswith("OK"):
        return f"passed ({count})"
    if last.startswith("FAILED"):
        return f"{last} of {count}"
    return f"did not pass: {last[:200] or 'no output'}"


def _summary(done: list[tuple[str, dict[str, Any], str, bool]]) -> str:
    """The synthesis: what each worker changed, grouped by file, then the merge and the tests, from the results."""
    per_file: dict[str, list[str]] = {}
    failures = []
    for name, _, text, is_error in done:
        if name != "llm_worker":
            continue
        if is_error:
            failures.append(text.splitlines()[0] if text else "no details")
            continue
        for line in text.splitlines():
            if line.startswith("["):  # a note of the hand's (its own workspace), not a change
                continue
            path, sep, change = line.partition(": ")
            if sep and "FAILED" not in change:
                per_file.setdefault(path, []).append(change)
            elif "FAILED" in change:
                failures.append(line)
    lines = ["Replaced datetime.utcnow() with datetime.now(timezone.utc) across the project:", ""]
    for path, changes in sorted(per_file.items()):
        calls = sum(1 for c in changes if not c.startswith("from datetime import"))
        imports = len(changes) - calls
        what = f"{calls} call{'s' if calls != 1 else ''} replaced"
        lines.append(f"- {path}: {what}" + (", timezone imported" if imports else ""))
    lines += [f"- not done: {f}" for f in failures]
    total = sum(len(c) for c in per_file.values())
    lines += ["", f"{total} edits in {len(per_file)} files, one worker per file."]
    merges = [(text, is_error) for name, _, text, is_error in done if name == "workspace_merge"]
    for text, is_error in merges:
        first = text.splitlines()[0] if text else ""
        lines.append(f"Merge: {first}" + (" — with conflicts, see below" if is_error else "."))
        if is_error:
            lines += ["", *text.splitlines()[1:40]]
    tests = [(text, is_error) for name, _, text, is_error in done if name == "sandbox_shell"]
    if tests:
        text, is_error = tests[-1]
        lines.append(f"Tests ({TEST_COMMAND}, in the sandbox): {outcome_of_tests(text, is_error)}.")
    else:
        lines.append("Run the project's tests to confirm nothing else depended on naive datetimes.")
    return "\n".join(lines)


def _fix_line(line: str) -> str:
    line = line.replace("default_factory=datetime.utcnow)", "default_factory=lambda: datetime.now(timezone.utc))")
    return line.replace("datetime.utcnow()", "datetime.now(timezone.utc)")


def _fix_import(line: str) -> str | None:
    match = re.match(r"^from datetime import (.+)$", line)
    if not match:
        return None
    names = [n.strip() for n in match.group(1).split(",")]
    if "timezone" in names:
        return None
    return f"from datetime import {', '.join(sorted([*names, 'timezone']))}"


def worker_reply(body: Mapping[str, Any]) -> dict[str, Any]:
    turn = _turn(body)
    match = _WORKER_TASK_RE.search(_first_user_text(body))
    if not match:
        return text_reply("I can only do the demo's utcnow task.", stop_reason="end_turn")
    path = match.group(1)
    if turn == 0:
        return tool_reply([("fs_read", {"path": path})], input_tokens=700, output_tokens=30)
    if turn == 1:
        source, is_error = (_tool_outputs(body) or [("", True)])[0]
        if is_error:
            return text_reply(f"could not read {path}: {source}")
        edits = []
        for number, line in enumerate(source.splitlines(), 1):
            fixed = _fix_import(line) if line.startswith("from datetime import") else _fix_line(line)
            if fixed is not None and fixed != line:
                edits.append((number, line, fixed))
        if not edits:
            return text_reply(f"{path}: nothing to change")
        calls = [("fs_edit", {"path": path, "old": old, "new": new}) for _, old, new in edits]
        return tool_reply(calls, input_tokens=1100, output_tokens=60 * len(calls))
    # turn 2: report what the edits did, from the fs_edit results
    messages = body.get("messages") or []
    planned = []
    for block in messages[-2].get("content", []) if len(messages) >= 2 else []:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            planned.append(block.get("input", {}))
    outcomes = _tool_outputs(body)
    report = []
    for edit, (text, is_error) in zip(planned, outcomes, strict=False):
        status = f"FAILED ({text})" if is_error else ""
        report.append(f"{path}: {edit.get('old', '').strip()} -> {edit.get('new', '').strip()} {status}".rstrip())
    return text_reply("\n".join(report), input_tokens=1300, output_tokens=40 * len(report))


def respond(body: dict[str, Any], *, think_time: float = 0.0) -> dict[str, Any]:
    """Answer one Messages API request as the orchestrator or as a worker."""
    if think_time:
        time.sleep(think_time)
    reply = orchestrator_reply(body) if "llm_worker" in _tool_names(body) or _is_orchestrator(body) else worker_reply(body)
    reply["model"] = body.get("model", reply.get("model"))
    return reply


def _is_orchestrator(body: Mapping[str, Any]) -> bool:
    system = body.get("system")
    text = system if isinstance(system, str) else json.dumps(system)
    return "You are the orchestrator" in (text or "")


def start_demo_model(think_time: float = 0.4) -> ScriptedMessagesAPI:
    """Start the scripted model on a free loopback port; the caller stops it."""
    server = ScriptedMessagesAPI(responder=lambda body: respond(body, think_time=think_time))
    return server.start()
