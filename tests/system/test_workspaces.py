"""Session workspaces end to end: a gateway with two tenants, the fs and sandbox hands as real processes on one
workspaces root; each session's files are its own, made on its first call, seen by its sandbox runs."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from gateway.tenants import hash_key
from hands import HandClient
from hands import metadata as md
from tests.procs import poll, start_service

KEYS = {"a": "tenant-a-key-00000000000000000001", "b": "tenant-b-key-00000000000000000002"}

TEST_FILE = """import unittest

from calc import add


class AddTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 3), 5)
"""


GIT_TOKEN = "ghp-the-hands-own-token-0000000000000001"


class _Remote(http.server.SimpleHTTPRequestHandler):
    """A git remote over dumb HTTP that wants the token as basic auth, as a forge does; it notes what it was sent."""

    seen: list[str]

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.seen.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(f"x-access-token:{GIT_TOKEN}".encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def git_remote(tmp_path):
    """(URL of a repository served over HTTP that needs the token, the Authorization headers it received)."""
    work, served = tmp_path / "remote-work", tmp_path / "remote"
    work.mkdir()
    (work / "app.py").write_text("print('from the repository')\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*git, str(work), "add", "."], check=True)
    subprocess.run([*git, str(work), "commit", "-qm", "first"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(served / "project.git")], check=True)
    subprocess.run(["git", "-C", str(served / "project.git"), "update-server-info"], check=True)
    seen: list[str] = []
    handler = type("Remote", (_Remote,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/project.git", seen
    server.shutdown()


@pytest.fixture
def stack(request, tmp_path, work_root, git_remote):
    root = work_root  # the sandbox's run uids (it runs as root here) must pass through: not pytest's 0700 tmp_path
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "metrics": None, "tenants": [
        {"name": name, "api_keys": [hash_key(key)], "allow": ["*"]} for name, key in KEYS.items()
    ]}))  # fmt: skip
    started = [start_service(["serve", "gateway", "--config", str(config)], ready_event="gateway serving", timeout=60)]
    try:
        gw = started[0].address
        env = {"BRAINHANDS_WORKSPACES": str(root), "BRAINHANDS_WORKSPACE_SOURCES": str(tmp_path / "sources"),
               "BRAINHANDS_WORKSPACE_REPOS": git_remote[0].rsplit("/", 1)[0] + "/",
               "BRAINHANDS_WORKSPACE_GIT_TOKEN": GIT_TOKEN, **getattr(request, "param", {})}
        for module in ("hands.builtin.fs", "hands.builtin.sandbox"):
            started.append(start_service(["serve", "hand", module, "--port", "0", "--register", gw], env=env, timeout=60))
        yield gw, root
    finally:
        for service in started:
            service.stop()


async def test_a_sessions_fs_writes_are_what_its_sandbox_runs_and_nobody_else_sees(stack):
    gw, root = stack
    clients = {name: HandClient(gw, api_key=key) for name, key in KEYS.items()}

    async def call(tenant: str, session: str, name: str, **tool_input):
        return await clients[tenant].execute(name, json.dumps(tool_input), session_id=session, timeout=60)

    try:
        await poll(lambda: _routed(clients["a"]), "the fs and sandbox hands to register", timeout=60)
        s1 = root / "a" / "s1"
        early = await call("a", "s1", "workspace_diff")
        assert "no workspace yet" in early.output
        assert not s1.exists()  # nothing is made before the session's first fs or sandbox call
        reply = await call("a", "s1", "fs_write", path="calc.py", content="def add(a, b):\n    return a + b\n")
        assert not reply.is_error, reply.output
        assert (s1 / "tree" / "calc.py").is_file() and (s1 / "git").is_dir()
        assert not (s1 / "tree" / ".git").exists()  # the history lies outside what the sandbox can write
        await call("a", "s1", "fs_write", path="test_calc.py", content=TEST_FILE)

        ran = await call("a", "s1", "sandbox_shell", command="python3 -m unittest -v 2>&1; pwd")
        assert not ran.is_error, ran.output
        assert "test_add" in ran.output and "OK" in ran.output and "/sandbox" in ran.output
        made = await call("a", "s1", "sandbox_python", code="open('made.txt', 'w').write('from the sandbox')")
        assert not made.is_error, made.output
        seen = await call("a", "s1", "fs_read", path="made.txt")
        assert seen.output == "from the sandbox"
        assert (s1 / "tree" / "made.txt").stat().st_uid == os.geteuid()  # given back after the run
        assert not (s1 / "tree" / "main.py").exists()  # the program itself is not written into the workspace
        diff = (await call("a", "s1", "workspace_diff")).output
        assert "+++ b/calc.py" in diff and "+    return a + b" in diff and "+++ b/made.txt" in diff
        assert "+++ b/test_calc.py" in diff and "__pycache__" not in diff

        # Another session of the same tenant, on the same services: its own empty workspace.
        other = await call("a", "s2", "fs_read", path="calc.py")
        assert other.is_error and "no such file" in other.output
        listed = await call("a", "s2", "sandbox_shell", command="ls -A; cat calc.py")
        assert listed.is_error and "add" not in listed.output
        # Another tenant with the same session id: its own workspace too.
        theirs = await call("b", "s1", "fs_read", path="calc.py")
        assert theirs.is_error and "no such file" in theirs.output
        assert (root / "b" / "s1" / "tree").is_dir() and not (root / "b" / "s1" / "tree" / "calc.py").exists()

        # Names are never taken from a caller's string as they come.
        for bad in ("../b", "..", ".hidden", "a/b"):
            refused = await call("a", bad, "fs_read", path="calc.py")
            assert refused.is_error and "cannot name a workspace" in refused.output, (bad, refused.output)
        nosession = await call("a", "", "fs_list")
        assert nosession.is_error and "no session" in nosession.output
        assert sorted(p.name for p in root.iterdir()) == ["a", "b"]
        assert sorted(p.name for p in (root / "a").iterdir()) == ["s1", "s2"]
    finally:
        for client in clients.values():
            await client.close()


async def test_a_session_started_from_a_source_works_on_a_copy_and_its_diff_shows_the_change(stack, tmp_path):
    gw, root = stack
    project = tmp_path / "sources" / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (project / "README").write_text("a project\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with HandClient(gw, api_key=KEYS["a"]) as client:

        async def call(session: str, source: Path, name: str, **tool_input):
            return await client.execute(name, json.dumps(tool_input), session_id=session, timeout=60,
                                        metadata={md.WORKSPACE: str(source)})

        await poll(lambda: _routed(client), "the fs and sandbox hands to register", timeout=60)
        edited = await call("s1", project, "fs_edit", path="pkg/calc.py", old="a - b", new="a + b")
        assert not edited.is_error, edited.output
        removed = await call("s1", project, "sandbox_shell", command="rm README && ls -A")
        assert not removed.is_error and removed.output.split() == ["pkg"], removed.output
        diff = (await call("s1", project, "workspace_diff")).output
        assert "-    return a - b\n+    return a + b" in diff and "deleted file" in diff and "--- a/README" in diff
        assert (project / "pkg" / "calc.py").read_text().endswith("a - b\n") and (project / "README").exists()

        refused = await call("s2", elsewhere, "fs_list")
        assert refused.is_error and "not one this service may copy from" in refused.output
        assert not (root / "a" / "s2").exists()


async def _routed(client: HandClient) -> bool:
    return {"fs_write", "sandbox_shell", "workspace_diff"} <= {spec.name for spec in await client.describe(timeout=5)}


async def test_workers_branch_from_their_parent_and_merge_back_with_conflicts_reported(stack):
    gw, root = stack
    clients = {name: HandClient(gw, api_key=key) for name, key in KEYS.items()}

    async def call(session: str, name: str, parent: str = "", tenant: str = "a", **tool_input):
        meta = {md.WORKSPACE_PARENT: parent, md.WORKER_WORKSPACES: "branch"} if parent else None
        return await clients[tenant].execute(name, json.dumps(tool_input), session_id=session, timeout=60, metadata=meta)

    try:
        await poll(lambda: _routed(clients["a"]), "the fs and sandbox hands to register", timeout=60)
        for name in ("a", "b", "c"):
            await call("p", "fs_write", path=f"{name}.txt", content=f"{name} one\n{name} two\n")
        # Three workers, each in its own branch of p's tree, each changing its own file (one through the sandbox).
        edits = await asyncio.gather(call("w1", "fs_edit", "p", path="a.txt", old="a one", new="a ONE"),
                                     call("w2", "fs_edit", "p", path="b.txt", old="b two", new="b TWO"),
                                     call("w3", "sandbox_shell", "p", command="sed -i 's/c one/c ONE/' c.txt"))
        for reply in edits:
            assert not reply.is_error, reply.output
        assert (root / "a" / "p" / "tree" / "a.txt").read_text() == "a one\na two\n"  # workers never touch p's files
        await call("q", "fs_list")
        await call("p", "fs_list", tenant="b")
        wrong_parent = await call("q", "workspace_merge", sessions=["w1"])
        assert wrong_parent.is_error and "no workspace branched from this session's" in wrong_parent.output
        other_tenant = await call("p", "workspace_merge", tenant="b", sessions=["w1"])
        assert other_tenant.is_error and "no workspace branched from this session's" in other_tenant.output
        merged = await call("p", "workspace_merge", sessions=["w1", "w2", "w3"])
        assert not merged.is_error and merged.output == "merged 3 of 3: w1, w2, w3", merged.output
        tree = root / "a" / "p" / "tree"
        assert [(tree / f"{n}.txt").read_text() for n in "abc"] == ["a ONE\na two\n", "b one\nb TWO\n", "c ONE\nc two\n"]
        diff = (await call("p", "workspace_diff")).output
        assert "+a ONE" in diff and "+b TWO" in diff and "+c ONE" in diff

        # Two workers changing the same line: the first merges, the second is a conflict the orchestrator sees.
        await call("w4", "fs_edit", "p", path="a.txt", old="a two", new="a two (w4)")
        await call("w5", "fs_edit", "p", path="a.txt", old="a two", new="a two (w5)")
        # No sessions named: every worker branched from p and not merged yet, in the order they branched.
        conflict = await call("p", "workspace_merge")
        assert conflict.is_error and conflict.output.startswith("merged 1 of 2: w4"), conflict.output
        assert "session w5" in conflict.output and "conflicts in a.txt" in conflict.output
        assert "<<<<<<<" in conflict.output and "a two (w4)" in conflict.output and "a two (w5)" in conflict.output
        assert (tree / "a.txt").read_text() == "a ONE\na two (w4)\n"  # the conflicting merge was undone
        again = await call("p", "workspace_merge")  # w5 is still not merged; w1-w4 are
        assert again.is_error and again.output.startswith("merged 0 of 1: none\nsession w5"), again.output

        # Without "branch", a worker works in its caller's files themselves: nothing to merge.
        shared = await clients["a"].execute("fs_write", json.dumps({"path": "d.txt", "content": "shared\n"}),
                                            session_id="w6", timeout=60, metadata={md.WORKSPACE_PARENT: "p"})
        assert not shared.is_error, shared.output
        assert (tree / "d.txt").read_text() == "shared\n"
        ran = await clients["a"].execute("sandbox_shell", json.dumps({"command": "cat d.txt a.txt"}), session_id="w6",
                                         timeout=60, metadata={md.WORKSPACE_PARENT: "p"})
        assert ran.output == "shared\na ONE\na two (w4)\n", ran.output
    finally:
        for client in clients.values():
            await client.close()


async def test_a_session_cloned_from_a_repository_never_shows_the_token_inside_the_sandbox(stack, git_remote, tmp_path):
    gw, root = stack
    url, seen = git_remote
    async with HandClient(gw, api_key=KEYS["a"]) as client:

        async def call(session: str, source: str, name: str, **tool_input):
            return await client.execute(name, json.dumps(tool_input), session_id=session, timeout=60,
                                        metadata={md.WORKSPACE: source})

        await poll(lambda: _routed(client), "the fs and sandbox hands to register", timeout=60)
        listed = await call("r1", f"{url}@main", "fs_list")
        assert not listed.is_error and listed.output.split() == ["app.py"], listed.output
        assert seen and seen[-1].startswith("Basic ")  # the clone presented the hand's token
        looked = await call("r1", url, "sandbox_shell", command=(
            "python3 app.py; env; ls -a; cat .git/config; "
            "for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do tr '\\0' '\\n' < $f; done 2>/dev/null; "
            "grep -rs x-access-token /sandbox /tmp /run /dev/shm | head -3; true"))
        assert "from the repository" in looked.output, looked.output
        assert GIT_TOKEN not in looked.output and base64.b64encode(GIT_TOKEN.encode()).decode()[:20] not in looked.output
        assert ".git" not in looked.output.split()  # the history lies outside the tree
        git_config = (root / "a" / "r1" / "git" / "config").read_text()
        assert url in git_config and GIT_TOKEN not in git_config  # not kept even where the sandbox cannot look

        for bad, why in ((f"http://tok:en@{url.split('://')[1]}", "may not carry credentials"),
                         ("https://elsewhere.example/x.git", "not one this service may clone")):
            refused = await call("r2", bad, "fs_list")
            assert refused.is_error and why in refused.output, refused.output


@pytest.mark.parametrize("stack", [{"BRAINHANDS_WORKSPACE_TTL": "3s"}], indirect=True)
async def test_a_workspace_unused_for_its_ttl_is_removed_by_the_services_and_one_in_use_is_kept(stack):
    gw, root = stack
    client = HandClient(gw, api_key=KEYS["a"])

    async def call(session: str, name: str, **tool_input):
        return await client.execute(name, json.dumps(tool_input), session_id=session, timeout=60)

    try:
        await poll(lambda: _routed(client), "the fs and sandbox hands to register", timeout=60)
        for session in ("idle", "busy"):
            assert not (await call(session, "fs_write", path="notes.txt", content=f"{session}\n")).is_error
        assert (await call("idle", "sandbox_shell", command="cat notes.txt")).output == "idle\n"
        assert (root / "a" / "idle" / "tree" / "notes.txt").is_file()
        for _ in range(5):  # 5 s: "busy" is used every second, "idle" not at all
            await asyncio.sleep(1)
            assert (await call("busy", "fs_read", path="notes.txt")).output.endswith("busy\n")
        async def idle_gone() -> bool:  # each call sweeps (at most every tenth of the TTL)
            await call("busy", "fs_list")
            return not (root / "a" / "idle").exists()

        await poll(idle_gone, "the idle workspace to be removed", timeout=10)
        assert (root / "a" / "busy" / "tree" / "notes.txt").read_text() == "busy\n"
        late = await call("idle", "fs_read", path="notes.txt")  # a late call of that session starts over, empty
        assert late.is_error and "no such file" in late.output, late.output
    finally:
        await client.close()


async def test_sessions_export_through_the_gateway_writes_the_callers_own_session_change_only(stack, tmp_path):
    from brain import open_store

    gw, _ = stack
    store = await open_store(str(tmp_path / "sessions.db"))
    try:
        session = await store.create_session("change notes", {}, None)
    finally:
        await store.close()
    client = HandClient(gw, api_key=KEYS["a"])
    try:
        await poll(lambda: _routed(client), "the fs and sandbox hands to register", timeout=60)
        wrote = await client.execute("fs_write", json.dumps({"path": "notes.txt", "content": "exported\n"}),
                                     session_id=session, timeout=60)
        assert not wrote.is_error, wrote.output
    finally:
        await client.close()

    def export(key: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "BRAINHANDS_API_KEY": key}
        return subprocess.run(["brainhands", "sessions", "export", session[:10], "--patch", "--gateway", gw,
                               "--sessions", str(tmp_path / "sessions.db")], capture_output=True, text=True,
                              timeout=60, env=env)

    mine = await asyncio.to_thread(export, KEYS["a"])
    assert mine.returncode == 0, mine.stderr
    assert mine.stdout.startswith("diff --git a/notes.txt b/notes.txt") and "+exported" in mine.stdout, mine.stdout
    applied = tmp_path / "applied"
    applied.mkdir()
    await asyncio.to_thread(subprocess.run, ["git", "apply"], input=mine.stdout, text=True, cwd=applied, check=True,
                            timeout=60)
    assert (applied / "notes.txt").read_text() == "exported\n"
    # Another tenant naming the same session id reaches no workspace of it: a clear error, no patch.
    theirs = await asyncio.to_thread(export, KEYS["b"])
    assert theirs.returncode != 0 and theirs.stdout == "", theirs.stdout
    assert "no workspace yet" in theirs.stderr, theirs.stderr
