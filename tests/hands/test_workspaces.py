"""Session workspaces on real hand servers in-process: the limits-only sandbox works in the session's tree,
two services making one workspace at once end with one, and the settings come from the environment."""

from __future__ import annotations

import asyncio
import os

import pytest

from hands import metadata as md
from hands._hand import Context
from hands.builtin.fs import make_fs_hands
from hands.builtin.sandbox import SandboxConfig, make_sandbox_hands
from hands.config import ConfigError
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
    ws = workspaces_from_env({"BRAINHANDS_WORKSPACES": str(root), "BRAINHANDS_WORKSPACE_SOURCES": f"/a{os.pathsep}/b"})
    assert ws is not None and ws.root == root and [str(s) for s in ws.sources] == ["/a", "/b"]
    with pytest.raises(ValueError, match="BRAINHANDS_WORKSPACES: .* is not a directory"):
        workspaces_from_env({"BRAINHANDS_WORKSPACES": str(root / "missing")})
    with pytest.raises(ConfigError, match="unknown key"):
        WorkspacesConfig(rooot="/x")
