"""The console's test stack: the scripted Messages API, a hand service, a brain service and the console as real
processes, and a real headless Chromium driven through selenium with Debian's chromedriver."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import grpc
import pytest

from brain.v1 import brain_pb2, brain_pb2_grpc
from brainhands.scripted_api import ScriptedMessagesAPI, text_reply, tool_reply
from tests.procs import start_service

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
#: Environment the services must not pick up from the machine running the tests.
SCRUBBED = ("BRAINHANDS_GATEWAY", "BRAINHANDS_SESSIONS", "BRAINHANDS_MODEL", "BRAINHANDS_API_KEY", "BRAINHANDS_BRAIN",
            "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
MODEL = "claude-sonnet-4-5"


def _task_of(body: dict) -> str:
    content = body["messages"][0]["content"]
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if block.get("type") == "text")


class Scripts:
    """Replies by task: each session's n-th request gets its task's n-th reply, whatever other sessions do."""

    def __init__(self):
        self.by_task: dict[str, list] = {}

    def add(self, task: str, *replies) -> str:
        self.by_task[task] = list(replies)
        return task

    def __call__(self, body: dict):
        task = _task_of(body)
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        replies = self.by_task.get(task)
        if replies is None:
            # The task may be wrapped by the brain's prompt: match the script whose task it contains.
            replies = next((r for t, r in self.by_task.items() if t in task), None)
        if replies is None or turn >= len(replies):
            return text_reply(f"(no script for turn {turn} of this task)")
        reply = replies[turn]
        return reply(body) if callable(reply) else reply


@pytest.fixture
def scripts():
    return Scripts()


@pytest.fixture
def model_api(scripts):
    with ScriptedMessagesAPI(responder=scripts) as api:
        yield api


@pytest.fixture
def processes():
    started = []

    def _start(args, **kwargs):
        kwargs.setdefault("timeout", 120.0)  # a loaded machine takes a while to import the SDKs
        service = start_service(args, **kwargs)
        started.append(service)
        return service

    yield _start
    for service in reversed(started):
        service.stop()


@pytest.fixture
def hands(processes):
    return processes(["serve", "hand", "tests.console.console_hands", "--port", "0"])


def start_brain(processes, hands, model_api, tmp_path, *args: str):
    env = {k: "" for k in SCRUBBED}
    env.update(ANTHROPIC_BASE_URL=model_api.base_url, ANTHROPIC_API_KEY="scripted-test-key")
    return processes(["serve", "brain", "--port", "0", "--gateway", hands.address, "--sessions",
                      str(tmp_path / "sessions.db"), "--model", MODEL, *args], env=env, ready_event="serving brain")


def start_console(processes, brain):
    env = {k: "" for k in SCRUBBED}
    service = processes(["console", "--listen", "127.0.0.1:0", "--brain", brain.address], env=env,
                        ready_event="serving console")
    service.url = f"http://{service.address}"
    return service


@pytest.fixture
def brain(processes, hands, model_api, tmp_path):
    return start_brain(processes, hands, model_api, tmp_path)


@pytest.fixture
def console(processes, brain):
    return start_console(processes, brain)


@pytest.fixture
async def brain_stub(brain):
    channel = grpc.aio.insecure_channel(brain.address)
    async with channel:
        yield brain_pb2_grpc.BrainServiceStub(channel)


class Runs:
    """Sessions started on the brain service; each Run stream is read to its end in the background."""

    def __init__(self, stub):
        self.stub = stub
        self.tasks: list[asyncio.Task] = []

    async def start(self, task: str, **request) -> str:
        call = self.stub.Run(brain_pb2.RunRequest(task=task, **request), timeout=120)
        first = await call.read()
        assert first.type == "session_started", first

        async def drain():
            events = [first]
            while (event := await call.read()) is not grpc.aio.EOF:  # read() once, read() to the end
                events.append(event)
            return events

        self.tasks.append(asyncio.create_task(drain()))
        return first.session_id

    async def status(self, session_id: str) -> int:
        got = await self.stub.GetSession(brain_pb2.GetSessionRequest(session_id=session_id), timeout=10)
        return got.session.status


@pytest.fixture
async def runs(brain_stub):
    r = Runs(brain_stub)
    yield r
    for task in r.tasks:
        task.cancel()
    await asyncio.gather(*r.tasks, return_exceptions=True)


@pytest.fixture
def browser(tmp_path):
    """A real headless Chromium (Debian's chromium and chromium-driver), a fresh profile, no network of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver are not installed; .ci/run installs them")
        pytest.skip("chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def screenshot(browser, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"console-{name}.png"
    browser.save_screenshot(str(path))
    return path


def fan_out(*seconds: float, text: str = "Done.") -> list:
    """A script: one turn asking for a slow call per entry, all at once, then a final answer."""
    return [tool_reply([("slow", {"seconds": s}) for s in seconds]), text_reply(text)]


def dumps(value) -> str:
    return json.dumps(value)
