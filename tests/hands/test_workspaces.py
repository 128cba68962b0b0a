"""Session workspaces on real hand servers in-process: the limits-only sandbox works in the session's tree,
two services making one workspace at once end with one, and the settings come from the environment."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hands import hand
from hands import metadata as md
from hands._hand import Context, HandError
from hands.builtin.fs import make_fs_hands
from hands.builtin.sandbox import SandboxConfig, make_sandbox_hands
from hands.config import ConfigError
from hands.delegation import CallerClient
from hands.disk_budget import DiskBudget, usage
from hands.workspaces import SOURCE_REF, SessionWorkspaces, WorkspacesConfig, workspaces_from_env

MIB = 1 << 20
MODES = [pytest.param("bubblewrap", marks=pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bwrap")),
         "limits-only"]


@pytest.fixture
def root(work_root):
    return work_root


def as_tenant(tenant: str, **extra: str) -> dict[str, str]:
    return {md.TENANT: tenant, **extra}


async def test_limits_only_sandbox_runs_in_the_session_workspace(root, hand_service, hand_client):
    workspaces = SessionWorkspaces(root)
    config = SandboxConfig(isolation="limits-only", work_root=str(root))
    running = await hand_service([*make_fs_hands(workspaces), *make_sandbox_hands(config, workspaces)])
    client = hand_client(running.address)
    wrote = await client.execute("fs_write", {"path": "notes.txt", "content": "seen"}, session_id="s1",
                                 metadata=as_tenant("t"), timeout=30)
    assert not wrote.is_error, wrote.output
    ran = await client.execute("sandbox_shell", {"command": "pwd; cat notes.txt"}, session_id="s1",
                               metadata=as_tenant("t"), timeout=30)
    assert not ran.is_error, ran.output
    assert ran.output.splitlines() == [str(root / "t" / "s1" / "tree"), "seen"]
    described = {spec.name: spec.description for spec in await client.describe(timeout=10)}
    assert "runs in the session's workspace" in described["sandbox_shell"]
    assert "the session's workspace may hold at most 1 GiB in 100000 files" in described["sandbox_python"]
    untrusted = await client.execute("fs_read", {"path": "notes.txt"}, session_id="s1", timeout=30)
    assert untrusted.is_error and "only served through the gateway" in untrusted.output


async def test_two_services_making_one_workspace_at_once_end_with_one(root):
    ctx = Context(call_id="c", session_id="s1", deadline=None, metadata=as_tenant("t"), logger=None)
    made = await asyncio.gather(*(SessionWorkspaces(root).provision(ctx) for _ in range(4)))
    assert {ws.path for ws in made} == {root / "t" / "s1"}
    assert sorted(p.name for p in (root / "t").iterdir()) == ["s1"]  # no staging directory left behind
    assert made[0].git("log", "--format=%s").stdout.decode().strip() == "source: empty"


def test_a_tenant_name_that_is_no_plain_name_is_stored_under_its_hash(root):
    ctx = Context(call_id="c", session_id="s1", deadline=None, metadata=as_tenant("../x"), logger=None)
    path = SessionWorkspaces(root).locate(ctx).path
    assert path.parent.parent == root and path.parent.name.startswith("~")


def test_per_session_workspaces_are_configured_from_the_environment(root):
    assert workspaces_from_env({}) is None  # the default: one shared root, as before
    ws = workspaces_from_env({"BRAINHANDS_WORKSPACES": str(root), "BRAINHANDS_WORKSPACE_SOURCES": f"/a{os.pathsep}/b",
                              "BRAINHANDS_WORKSPACE_TTL": "2h"})
    assert ws is not None and ws.root == root and [str(s) for s in ws.sources] == ["/a", "/b"] and ws.ttl == 7200
    with pytest.raises(ConfigError, match="BRAINHANDS_WORKSPACE_TTL: must be a duration"):
        workspaces_from_env({"BRAINHANDS_WORKSPACES": str(root), "BRAINHANDS_WORKSPACE_TTL": "soon"})
    with pytest.raises(ValueError, match="BRAINHANDS_WORKSPACES: .* is not a directory"):
        workspaces_from_env({"BRAINHANDS_WORKSPACES": str(root / "missing")})
    with pytest.raises(ConfigError, match="unknown key"):
        WorkspacesConfig(rooot="/x")
    assert ws.budget == DiskBudget(1 << 30, 100_000)  # the default
    small = workspaces_from_env({"BRAINHANDS_WORKSPACES": str(root), "BRAINHANDS_WORKSPACE_MAX_BYTES": "1048576",
                                 "BRAINHANDS_WORKSPACE_MAX_FILES": "50"})
    assert small is not None and small.budget == DiskBudget(1048576, 50)
    with pytest.raises(ConfigError, match="BRAINHANDS_WORKSPACE_MAX_BYTES: must be an integer >= 1, got '1G'"):
        workspaces_from_env({"BRAINHANDS_WORKSPACES": str(root), "BRAINHANDS_WORKSPACE_MAX_BYTES": "1G"})


def ctx_of(session: str, tenant: str = "t") -> Context:
    return Context(call_id="c", session_id=session, deadline=None, metadata=as_tenant(tenant), logger=None)


async def test_a_workspace_unused_for_its_ttl_is_removed_and_one_in_use_is_kept(root):
    workspaces = SessionWorkspaces(root, ttl=3600)
    old, fresh = await workspaces.provision(ctx_of("old")), await workspaces.provision(ctx_of("fresh"))
    worker = Context(call_id="c", session_id="worker", deadline=None, logger=None,
                     metadata={**as_tenant("t"), md.WORKSPACE_PARENT: "old"})
    assert (await workspaces.provision(worker)).tree.resolve() == old.tree  # a worker shares its caller's files
    (old.tree / "work.txt").write_text("done long ago")
    os.utime(old.path / "used", (time.time() - 7200, time.time() - 7200))
    assert old.path in workspaces.remove_expired()
    workspaces.remove_expired()  # the worker's link to it, if the first pass met it before its target went
    assert not old.path.exists() and fresh.path.is_dir()
    assert [p.name for p in (root / "t").iterdir()] == ["fresh"]  # nothing half-removed left
    again = await workspaces.provision(ctx_of("old"))  # a late call of that session starts over, empty
    assert list(again.tree.iterdir()) == []


async def test_what_a_crash_left_half_made_or_half_removed_is_cleaned_up_and_work_in_progress_is_not(root):
    workspaces = SessionWorkspaces(root)  # no ttl: workspaces stay, leftovers still go
    kept = await workspaces.provision(ctx_of("kept"))
    tenant = kept.path.parent
    hour_ago = time.time() - 3700
    for name in (".new-crashed", ".gone-kept-1-2", ".new-in-progress"):
        (tenant / name / "tree").mkdir(parents=True)
        (tenant / name / "tree" / "big.bin").write_bytes(b"x" * 1000)
    for name in (".new-crashed", ".gone-kept-1-2"):
        os.utime(tenant / name, (hour_ago, hour_ago))
    os.utime(kept.path / "used", (hour_ago, hour_ago))
    removed = workspaces.remove_expired()
    assert sorted(p.name for p in removed) == [".gone-kept-1-2", ".new-crashed"]
    assert sorted(p.name for p in tenant.iterdir()) == [".new-in-progress", "kept"]


async def test_each_call_sweeps_for_expired_workspaces(root):
    workspaces = SessionWorkspaces(root, ttl=0.001)
    first = await workspaces.provision(ctx_of("first"))
    os.utime(first.path / "used", (time.time() - 60, time.time() - 60))
    await workspaces.provision(ctx_of("second"))
    assert not first.path.exists() and (root / "t" / "second").is_dir()


async def test_a_hand_calling_for_a_session_of_its_own_names_its_caller_as_the_workspace_parent(hand_service):
    @hand
    async def headers(ctx: Context) -> str:
        """The workspace headers this call came with."""
        keys = (md.WORKSPACE, md.WORKSPACE_PARENT, md.SESSION_ID, md.WORKER_WORKSPACES)
        return json.dumps({k: ctx.metadata.get(k) for k in keys})

    running = await hand_service([headers])
    ctx = Context(call_id="c", session_id="parent", deadline=None, logger=None,
                  metadata={md.TENANT: "t", md.WORKSPACE: "/src/project", md.WORKSPACE_PARENT: "grandparent",
                            md.WORKER_WORKSPACES: "branch"})
    client = CallerClient(ctx, running.address)
    child = json.loads((await client.execute("headers", session_id="child")).output)
    assert child == {md.WORKSPACE: "/src/project", md.WORKSPACE_PARENT: "parent", md.SESSION_ID: "child",
                     md.WORKER_WORKSPACES: "branch"}
    same = json.loads((await client.execute("headers")).output)  # its caller's own session: no parent to name
    assert same == {md.WORKSPACE: "/src/project", md.WORKSPACE_PARENT: None, md.SESSION_ID: "parent",
                    md.WORKER_WORKSPACES: "branch"}


def git(repo, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "protocol.file.allow=always",
                           "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout


def state_of(repo) -> tuple:
    """Everything provisioning might change in a repository: refs, status, worktrees, config, index."""
    dotgit = repo / ".git"
    common = Path(git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir").strip())
    return (git(repo, "for-each-ref"), git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored"),
            git(repo, "worktree", "list", "--porcelain"), git(repo, "stash", "list"),
            (common / "config").read_bytes(), sorted(p.name for p in common.iterdir()),
            dotgit.read_bytes() if dotgit.is_file() else (dotgit / "index").read_bytes())


@pytest.fixture
def project(tmp_path):
    """A repository with two commits, then edited, deleted, untracked and ignored files not committed."""
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "gone.txt").write_text("deleted before the session\n")
    (repo / ".gitignore").write_text("*.log\n")
    os.symlink("calc.py", repo / "link.py")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    (repo / "README").write_text("v1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "second")
    (repo / "README").write_text("v2, not committed\n")
    (repo / "gone.txt").unlink()
    (repo / "notes").mkdir()
    (repo / "notes" / "todo.txt").write_text("untracked\n")
    (repo / "build.log").write_text("ignored\n")
    return repo


def from_source(source, session: str = "s1") -> Context:
    return Context(call_id="c", session_id=session, deadline=None, logger=None,
                   metadata={**as_tenant("t"), md.WORKSPACE: str(source)})


async def test_a_local_repository_source_keeps_its_history_and_starts_as_the_users_files_are(root, project):
    before = state_of(project)
    head = git(project, "rev-parse", "HEAD").strip()
    ws = await SessionWorkspaces(root, sources=(str(project.parent),)).provision(from_source(project))
    subjects = ws.git("log", "--format=%s", "main").stdout.decode().split("\n")[:-1]
    assert subjects == [f"source: working tree of {project}", "second", "first"]
    assert ws.git("rev-parse", "main~1").stdout.decode().strip() == head
    assert ws.git("rev-parse", SOURCE_REF).stdout.decode() == ws.git("rev-parse", "HEAD").stdout.decode()
    files = sorted(str(p.relative_to(ws.tree)) for p in ws.tree.rglob("*"))
    assert files == [".gitignore", "README", "calc.py", "link.py", "notes", "notes/todo.txt"]  # no .git, no build.log
    assert (ws.tree / "README").read_text() == "v2, not committed\n"
    assert os.readlink(ws.tree / "link.py") == "calc.py"
    assert ws.diff() == "" and ws.git("status", "--porcelain").stdout == b""
    assert "[remote" not in (ws.git_dir / "config").read_text()
    assert (ws.git_dir / "brainhands-source").read_text() == f"{project}\n"
    assert state_of(project) == before  # the user's repository was only read


async def test_a_clean_repository_adds_no_commit_and_a_worktree_source_starts_from_its_own_head(root, tmp_path):
    repo = tmp_path / "clean"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("a\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "only")
    workspaces = SessionWorkspaces(root, sources=(str(tmp_path),))
    clean = await workspaces.provision(from_source(repo, "s1"))
    assert clean.git("log", "--format=%s").stdout.decode() == "only\n"
    assert clean.git("rev-parse", SOURCE_REF).stdout.decode() == git(repo, "rev-parse", "HEAD")

    git(repo, "worktree", "add", "-q", str(tmp_path / "feature"), "-b", "feature")
    (tmp_path / "feature" / "b.txt").write_text("b\n")
    git(tmp_path / "feature", "add", ".")
    git(tmp_path / "feature", "commit", "-qm", "on the feature branch")
    before = state_of(tmp_path / "feature"), state_of(repo)
    branch = await workspaces.provision(from_source(tmp_path / "feature", "s2"))
    assert branch.git("log", "--format=%s").stdout.decode() == "on the feature branch\nonly\n"
    assert sorted(p.name for p in branch.tree.iterdir()) == ["a.txt", "b.txt"]
    assert (state_of(tmp_path / "feature"), state_of(repo)) == before


async def test_a_repository_with_no_commit_yet_starts_from_one_commit_of_its_files(root, tmp_path):
    repo = tmp_path / "new"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("a\n")
    ws = await SessionWorkspaces(root, sources=(str(tmp_path),)).provision(from_source(repo))
    assert ws.git("log", "--format=%s").stdout.decode() == f"source: working tree of {repo}\n"
    assert (ws.tree / "a.txt").read_text() == "a\n" and ws.diff() == ""


async def test_a_source_with_submodules_or_an_unreadable_git_directory_is_refused(root, tmp_path, project):
    outer = tmp_path / "outer"
    outer.mkdir()
    git(outer, "init", "-q")
    git(outer, "submodule", "add", "-q", str(project), "vendored")
    workspaces = SessionWorkspaces(root, sources=(str(tmp_path),))
    with pytest.raises(HandError, match="has submodules \\(vendored\\), which a workspace cannot take yet"):
        await workspaces.provision(from_source(outer, "s1"))
    broken = tmp_path / "broken"
    (broken / ".git").mkdir(parents=True)
    (broken / ".git" / "config").write_text("[core]\n")
    with pytest.raises(HandError, match="has a .git that git cannot read as a repository"):
        await workspaces.provision(from_source(broken, "s2"))
    assert sorted(p.name for p in (root / "t").iterdir()) == []  # nothing half-made left


async def test_a_tracked_file_below_a_directory_since_replaced_by_a_symlink_is_not_read_through_it(root, tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    (repo / "conf").mkdir(parents=True)
    outside.mkdir()
    (outside / "key").write_text("not the session's\n")
    git(repo, "init", "-q")
    (repo / "conf" / "key").write_text("public\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    shutil.rmtree(repo / "conf")
    os.symlink(outside, repo / "conf")  # git sees conf/key deleted and a new symlink conf, and so does the workspace
    ws = await SessionWorkspaces(root, sources=(str(tmp_path),)).provision(from_source(repo))
    assert [p.name for p in ws.tree.iterdir()] == ["conf"] and os.readlink(ws.tree / "conf") == str(outside)
    assert ws.git("ls-tree", "-r", "--name-only", "HEAD").stdout.decode() == "conf\n"
    assert ws.git("log", "--format=%s").stdout.decode() == f"source: working tree of {repo}\none\n"
    assert b"not the session's" not in ws.git("cat-file", "--batch-all-objects", "--batch").stdout
@pytest.fixture
def budgeted(root, hand_service, hand_client):
    """budgeted(max_bytes, max_files, isolation) -> call(hand, session, **input): fs and sandbox hands over workspaces
    with that disk budget, called as the gateway would for tenant t."""

    async def make(max_bytes: int, max_files: int = 100_000, isolation: str = "limits-only"):
        workspaces = SessionWorkspaces(root, budget=DiskBudget(max_bytes, max_files))
        config = SandboxConfig(isolation=isolation, work_root=str(root))
        running = await hand_service([*make_fs_hands(workspaces), *make_sandbox_hands(config, workspaces)])
        client = hand_client(running.address)

        async def call(name: str, session: str, **tool_input):
            return await client.execute(name, tool_input, session_id=session, metadata=as_tenant("t"), timeout=60)

        return call

    return make


@pytest.mark.parametrize("isolation", MODES)
async def test_a_sandbox_run_writing_past_the_workspace_budget_is_stopped_and_its_files_kept(root, budgeted, isolation):
    call = await budgeted(32 * MIB, isolation=isolation)
    tree = root / "t" / "s1" / "tree"
    within = await call("sandbox_shell", "s1", command="head -c 4000000 /dev/zero > small.bin && echo wrote")
    assert not within.is_error and within.output.strip() == "wrote", within.output  # work under the budget: as before
    # As fast as the shell can: 4 MiB files, up to 800 MiB in all if nothing stops it (so never the host's whole disk).
    flood = ("i=0; while [ $i -lt 200 ]; do dd if=/dev/zero of=flood$i bs=1M count=4 2>/dev/null || exit 9; "
             "i=$((i+1)); done; echo finished")
    ran = await call("sandbox_shell", "s1", command=flood)
    assert ran.is_error, ran.output
    assert "finished" not in ran.output
    assert "stopped: the run took the session's workspace past its disk budget of 32 MiB" in ran.output, ran.output
    assert "BRAINHANDS_WORKSPACE_MAX_BYTES" in ran.output and "Nothing was deleted" in ran.output
    held = usage(tree).bytes
    assert 32 * MIB < held <= 32 * MIB + 64 * MIB  # stopped within a margin of the budget (measured: 15-41 MiB, at most 78)
    assert (tree / "small.bin").stat().st_size == 4000000 and (tree / "flood0").is_file()  # nothing deleted

    refused = await call("fs_write", "s1", path="notes.txt", content="more")
    assert refused.is_error and "refused: writing 4 bytes would take the workspace past its disk budget of 32 MiB" in (
        refused.output), refused.output
    assert "it holds " in refused.output and not (tree / "notes.txt").exists()
    grow = await call("sandbox_shell", "s1", command="head -c 100000 /dev/zero > more.bin; sleep 2; echo done")
    assert grow.is_error and "stopped:" in grow.output, grow.output  # over budget, a run may not make it bigger

    cleaned = await call("sandbox_shell", "s1", command="rm -f flood* more.bin && ls")
    assert not cleaned.is_error and cleaned.output.split() == ["small.bin"], cleaned.output
    wrote = await call("fs_write", "s1", path="notes.txt", content="more")
    assert not wrote.is_error, wrote.output


async def test_a_run_that_ends_past_the_budget_before_it_is_measured_says_so(root, budgeted):
    call = await budgeted(1 * MIB, isolation="limits-only")
    # Three files of 0.9 MiB, written in a moment: the run may end before the watch walks the tree.
    ran = await call("sandbox_shell", "s1", command="for i in 1 2 3; do head -c 900000 /dev/zero > f$i; done")
    assert ran.is_error, ran.output
    assert "past its disk budget of 1 MiB" in ran.output and "Nothing was deleted" in ran.output, ran.output
    tree = root / "t" / "s1" / "tree"
    assert (tree / "f1").stat().st_size == 900000 and (tree / "f2").is_file()  # nothing deleted


async def test_one_file_may_not_outgrow_the_whole_budget(root, budgeted):
    call = await budgeted(2 * MIB, isolation="limits-only")
    ran = await call("sandbox_shell", "s1", command="head -c 10000000 /dev/zero > big")
    assert ran.is_error and "File too large" in ran.output, ran.output  # the write past RLIMIT_FSIZE fails (EFBIG)
    assert (root / "t" / "s1" / "tree" / "big").stat().st_size == 2 * MIB


async def test_fs_writes_past_the_budget_are_refused_and_change_nothing(root, budgeted):
    call = await budgeted(1 * MIB, max_files=4)
    tree = root / "t" / "s1" / "tree"
    first = await call("fs_write", "s1", path="a.txt", content="head\n" + "a" * 600_000)
    assert not first.is_error, first.output
    refused = await call("fs_write", "s1", path="sub/b.txt", content="b" * 600_000)
    assert refused.is_error, refused.output
    assert ("sub/b.txt: refused: writing 585.9 KiB would take the workspace past its disk budget of 1 MiB and 4 files "
            "(BRAINHANDS_WORKSPACE_MAX_BYTES, BRAINHANDS_WORKSPACE_MAX_FILES); it holds 58") in refused.output, refused.output
    assert "KiB in 1 file or directory now. Nothing was changed" in refused.output
    assert sorted(p.name for p in tree.iterdir()) == ["a.txt"]  # not even the parent directory was made
    grown = await call("fs_edit", "s1", path="a.txt", old="head", new="c" * 500_000)
    assert grown.is_error and "past its disk budget of 1 MiB" in grown.output, grown.output
    assert (tree / "a.txt").read_text() == "head\n" + "a" * 600_000  # untouched, not half-written
    edited = await call("fs_edit", "s1", path="a.txt", old="head", new="c" * 20)
    assert not edited.is_error, edited.output
    smaller = await call("fs_write", "s1", path="a.txt", content="short")  # a write that shrinks the tree is let in
    assert not smaller.is_error, smaller.output
    for name in ("b.txt", "c.txt", "d.txt"):
        assert not (await call("fs_write", "s1", path=name, content="x")).is_error
    fifth = await call("fs_write", "s1", path="e.txt", content="x")
    assert fifth.is_error and "and 4 files" in fifth.output and "in 4 files and directories now" in fifth.output
    other = await call("fs_write", "s2", path="a.txt", content="a" * 600_000)  # each session has its own budget
    assert not other.is_error, other.output


async def test_a_tree_far_over_its_budget_may_shrink_but_not_grow(root, budgeted):
    call = await budgeted(1 * MIB, isolation="limits-only")
    assert not (await call("fs_list", "s1")).is_error  # made, empty
    tree = root / "t" / "s1" / "tree"
    for i in range(10):  # 10 MiB, as a source larger than the budget would leave it
        (tree / f"big{i}").write_bytes(b"x" * MIB)
    shrink = await call("sandbox_shell", "s1", command="rm big0 big1; sleep 1; echo removed")
    assert shrink.output.startswith("removed") and "stopped" not in shrink.output, shrink.output
    assert shrink.is_error and "is past its disk budget of 1 MiB" in shrink.output  # still over, and said so
    grow = await call("sandbox_shell", "s1", command="head -c 200000 /dev/zero > more; sleep 2; echo grew")
    assert grow.is_error and "stopped: the run took" in grow.output and "grew" not in grow.output, grow.output
