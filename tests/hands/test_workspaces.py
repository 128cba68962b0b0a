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
from hands.workspaces import SOURCE_REF, SessionWorkspaces, WorkspacesConfig, workspaces_from_env


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
    assert "the session's workspace is on the host's disk with no total bound" in described["sandbox_python"]
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
