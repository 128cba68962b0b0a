"""`brainhands run --session-workspace` on a local git repository keeps its history and leaves it as it was, and
`brainhands sessions export ID --branch NAME` writes the session's change as a branch on top of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from brain.sessions import open_store
from tests.system.test_cli_run import assert_one_line, brainhands, env, script, spawn  # noqa: F401 - fixtures

pytestmark = pytest.mark.system


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
                          capture_output=True, text=True, check=True)
    return done.stdout


def state_of(repo: Path) -> tuple:
    """What a run and an export must not change in the user's repository besides the branch: HEAD, files, others."""
    return (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored"),
            git(repo, "worktree", "list", "--porcelain"), (repo / ".git" / "config").read_text(),
            (repo / "README").read_text(), (repo / "calc.py").read_text())


async def _run(spawn, tmp_path: Path, work_root: Path, source: Path, db: Path) -> str:  # noqa: F811
    """Run a scripted session on a workspace of source that fixes add and writes a file; its session id."""
    model = script(tmp_path, [
        {"tool_calls": [["fs_edit", {"path": "calc.py", "old": "a - b", "new": "a + b"}],
                        ["fs_write", {"path": "CHANGES", "content": "add adds\n"}]]},
        {"text": "Fixed add."},
    ])
    code, out, err = await brainhands(spawn, "run", "Fix add", "--model", model, "--sessions", str(db),
                                      "--workspace", str(source), "--session-workspace",
                                      extra_env={"XDG_STATE_HOME": str(work_root)})
    assert code == 0, err
    assert out == "Fixed add.\n"
    made = "cloned from" if (source / ".git").exists() else "copied from"
    assert f"session workspaces under {work_root / 'brainhands' / 'workspaces'}, {made} {source}" in err, err
    store = await open_store(str(db))
    try:
        [info] = await store.list_sessions()
    finally:
        await store.close()
    return info.id


async def test_a_repository_sources_session_exports_as_a_branch_on_top_of_its_head(spawn, tmp_path, work_root):  # noqa: F811
    project = tmp_path / "project"
    project.mkdir()
    git(project, "init", "-q", "-b", "main")
    (project / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (project / ".gitignore").write_text("*.log\n")
    git(project, "add", ".")
    git(project, "commit", "-qm", "first")
    (project / "README").write_text("v1\n")
    git(project, "add", ".")
    git(project, "commit", "-qm", "second")
    head = git(project, "rev-parse", "HEAD").strip()
    (project / "README").write_text("v2, not committed\n")
    (project / "todo.txt").write_text("untracked\n")
    (project / "build.log").write_text("ignored\n")
    before, refs = state_of(project), git(project, "for-each-ref")
    db = tmp_path / "sessions.db"
    env_state = {"XDG_STATE_HOME": str(work_root)}

    sid = await _run(spawn, tmp_path, work_root, project, db)
    [workspace] = (work_root / "brainhands" / "workspaces").glob(f"*/{sid}")
    subjects = git(workspace / "git", "log", "--format=%s", "main").splitlines()
    assert subjects == [f"source: working tree of {project}", "second", "first"]  # the history is kept
    tree = workspace / "tree"
    assert sorted(p.name for p in tree.iterdir()) == [".gitignore", "CHANGES", "README", "calc.py", "todo.txt"]
    assert (tree / "README").read_text() == "v2, not committed\n" and (tree / "calc.py").read_text().endswith("a + b\n")
    assert (state_of(project), git(project, "for-each-ref")) == (before, refs)  # the run only read the repository

    code, out, err = await brainhands(spawn, "sessions", "export", sid[:8], "--branch", "brainhands/fix-add",
                                      "--sessions", str(db), extra_env=env_state)
    assert code == 0, err
    commit = git(project, "rev-parse", "brainhands/fix-add").strip()
    assert out == f"branch brainhands/fix-add at {commit} in {project}\n"
    assert git(project, "log", "--format=%s", "brainhands/fix-add").splitlines() == [
        f"session {sid}: Fix add", f"source: working tree of {project}", "second", "first"]
    assert git(project, "rev-parse", "brainhands/fix-add~2").strip() == head
    assert git(project, "diff", "--name-only", "brainhands/fix-add~1", "brainhands/fix-add").split() == [
        "CHANGES", "calc.py"]  # the session's change, on top of the user's files as they were
    assert git(project, "show", "brainhands/fix-add:calc.py").endswith("a + b\n")
    assert state_of(project) == before  # only the branch was added: HEAD, files and config are as they were
    assert git(project, "for-each-ref", "--format=%(refname)").split() == ["refs/heads/brainhands/fix-add",
                                                                          "refs/heads/main"]

    code, out, err = await brainhands(spawn, "sessions", "export", sid, "--branch", "brainhands/fix-add",
                                      "--sessions", str(db), extra_env=env_state)
    assert code != 0 and out == ""
    assert assert_one_line(err) == (f"brainhands: {project} already has a branch brainhands/fix-add (at {commit[:12]}): "
                                    "give --force to overwrite it, or another name")
    (tree / "CHANGES").write_text("add adds, for real\n")  # the session's files changed since: --force takes them
    code, out, err = await brainhands(spawn, "sessions", "export", sid, "--branch", "brainhands/fix-add", "--force",
                                      "--sessions", str(db), extra_env=env_state)
    assert code == 0, err
    forced = git(project, "rev-parse", "brainhands/fix-add").strip()
    assert out == f"branch brainhands/fix-add at {forced} in {project} (was {commit[:12]})\n"
    assert git(project, "show", "brainhands/fix-add:CHANGES") == "add adds, for real\n"

    for args, expected in (
        (["--branch", "bad..name"], "brainhands: --branch 'bad..name' is not a valid git branch name"),
        (["--branch", "main", "--force"], f"brainhands: git fetch in {project} failed: fatal: refusing to fetch into"),
        (["--branch", "x", "--gateway", "127.0.0.1:1"], "brainhands: --branch writes from the session's workspace on"),
        (["--branch", "x", "-o", str(tmp_path / "x.patch")], "brainhands: -o/--output is for --patch"),
        (["--patch", "--into", str(project)], "brainhands: --into and --force go with --branch NAME"),
    ):
        code, out, err = await brainhands(spawn, "sessions", "export", sid, *args, "--sessions", str(db),
                                          extra_env=env_state)
        assert code != 0 and out == "", (args, out)
        assert assert_one_line(err).startswith(expected), (args, err)
    code, _, err = await brainhands(spawn, "sessions", "export", sid, "--patch", "--branch", "x", "--sessions", str(db))
    assert code == 2 and "not allowed with argument" in err
    assert state_of(project) == before


async def test_a_plain_directorys_session_needs_into_and_its_branch_has_the_workspaces_history(spawn, tmp_path,  # noqa: F811
                                                                                                work_root):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    db = tmp_path / "sessions.db"
    env_state = {"XDG_STATE_HOME": str(work_root)}
    sid = await _run(spawn, tmp_path, work_root, plain, db)

    code, out, err = await brainhands(spawn, "sessions", "export", sid, "--branch", "fix", "--sessions", str(db),
                                      extra_env=env_state)
    assert code != 0 and out == ""
    assert assert_one_line(err) == (f"brainhands: the session's workspace was copied from {plain}, which is not a git "
                                    "repository: give --into REPO, the local git repository to write branch fix into")
    code, out, err = await brainhands(spawn, "sessions", "export", sid, "--branch", "fix", "--into", str(plain),
                                      "--sessions", str(db), extra_env=env_state)
    assert code != 0 and assert_one_line(err) == f"brainhands: --into {plain}: not a git repository"

    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    code, out, err = await brainhands(spawn, "sessions", "export", sid, "--branch", "fix", "--into", str(other),
                                      "--sessions", str(db), extra_env=env_state)
    assert code == 0, err
    assert out == f"branch fix at {git(other, 'rev-parse', 'fix').strip()} in {other}\n"
    assert git(other, "log", "--format=%s", "fix").splitlines() == [f"session {sid}: Fix add", f"source: {plain}"]
    assert git(other, "show", "fix:calc.py").endswith("a + b\n")
    assert not (plain / ".git").exists() and (plain / "calc.py").read_text().endswith("a - b\n")
