"""Session workspaces on real hand servers in-process: the limits-only sandbox works in the session's tree,
two services making one workspace at once end with one, and the settings come from the environment."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from hands import hand
from hands import metadata as md
from hands._hand import Context
from hands.builtin.fs import make_fs_hands
from hands.builtin.sandbox import SandboxConfig, make_sandbox_hands
from hands.config import ConfigError
from hands.delegation import CallerClient
from hands.workspaces import SessionWorkspaces, WorkspacesConfig, workspaces_from_env


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
