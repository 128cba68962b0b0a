"""Session workspaces: one directory tree per (tenant, session), made on the session's first fs or sandbox call.

The fs hands and the sandbox hands of one deployment are given the same root (``BRAINHANDS_WORKSPACES``) and
find a call's workspace from what the gateway vouches for: the tenant it authenticated (``x-brainhands-tenant``,
which it drops when a caller sends it, as for the memory hands) and the session id (``x-brainhands-session-id``).
Each workspace is ``ROOT/<tenant>/<session>/`` holding

- ``tree/``: the files the session works on; the only part the fs hands serve and the sandbox binds;
- ``git/``: a git directory whose commit ``SOURCE_REF`` is the source the tree started from (on top of the
  source's own history when that is a git repository). It lies outside the tree, so
  code run in the sandbox can neither read nor rewrite it (a ``.git/config`` the sandbox could write would make
  the hand's own ``git diff`` run its commands).

Names come from validated strings only: a session id is letters, digits, '.', '_', '-' (starting with a letter or
digit) or the call is refused; a tenant name that is not is stored under a hash of itself. A workspace is made
whole in a temporary directory and renamed into place, so two services provisioning it at once (the fs and the
sandbox hand of one session) end with one, and nobody ever sees half of one.

Without ``BRAINHANDS_WORKSPACES`` nothing here is used: the fs hands serve one root (``BRAINHANDS_WORKSPACE``) for
everyone and the sandbox runs each command in a fresh empty directory, as before workspaces existed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

from hands import metadata as md
from hands._hand import Context, HandError
from hands.config import ConfigModel, Duration, whole
from hands.disk_budget import MAX_BYTES_ENV, MAX_FILES_ENV, DiskBudget

WORKSPACES_ENV = "BRAINHANDS_WORKSPACES"
SOURCES_ENV = "BRAINHANDS_WORKSPACE_SOURCES"
TTL_ENV = "BRAINHANDS_WORKSPACE_TTL"
REPOS_ENV = "BRAINHANDS_WORKSPACE_REPOS"
TOKEN_ENV = "BRAINHANDS_WORKSPACE_GIT_TOKEN"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: What the sandbox leaves in a tree that is nobody's change (caches of the tests it runs).
_EXCLUDE = "__pycache__/\n*.pyc\n.pytest_cache/\n"
#: The commit a workspace started from (its source, or its parent's tree when it was branched): diffs are against it.
SOURCE_REF = "refs/brainhands/source"
_GIT_TIMEOUT = 120.0
_MAX_DIFF_BYTES = 256 * 1024


def _paths(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(os.pathsep) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"must be directories separated by {os.pathsep!r}, got {value!r}")
    return tuple(item for item in items if item)


class WorkspacesConfig(ConfigModel):
    """Where session workspaces live and which local directories may be their sources; from the environment."""

    config_name = "workspaces config"
    env_vars = {"root": WORKSPACES_ENV, "sources": SOURCES_ENV, "ttl": TTL_ENV, "repos": REPOS_ENV,
                "git_token": TOKEN_ENV, "max_bytes": MAX_BYTES_ENV, "max_files": MAX_FILES_ENV}

    root: str | None = None  # BRAINHANDS_WORKSPACES: per-session workspaces under it; unset: one shared root
    # BRAINHANDS_WORKSPACE_SOURCES: directories (':'-separated) a session's source may be in or be.
    sources: Annotated[tuple[str, ...], BeforeValidator(_paths)] = ()
    # BRAINHANDS_WORKSPACE_TTL: a workspace no call has used for this long is removed (unset: kept until removed).
    ttl: Duration | None = None
    # BRAINHANDS_WORKSPACE_REPOS: URL prefixes (space-separated) a session's source may be cloned from.
    repos: Annotated[tuple[str, ...], BeforeValidator(lambda v: tuple(v.split()) if isinstance(v, str) else v)] = ()
    # BRAINHANDS_WORKSPACE_GIT_TOKEN: the token clones present (HTTP basic auth); never in a URL, a config or the sandbox.
    git_token: str | None = None
    # BRAINHANDS_WORKSPACE_MAX_BYTES: the most one session's tree may hold, in bytes (fs writes past it are refused,
    # a sandbox run that passes it is stopped). 1 GiB: a checkout with its virtualenv or node_modules and build output
    # fits, and a host's disk holds the workspaces of many sessions at once.
    max_bytes: whole(1) = 1 << 30
    # BRAINHANDS_WORKSPACE_MAX_FILES: the most files, directories and symlinks one session's tree may hold.
    max_files: whole(1) = 100_000


def _git(git_dir: Path, tree: Path | None, *args: str, env: Mapping[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    """git on a workspace, with no system or user config, no hooks and no fsmonitor: only what we say runs.

    tree None runs git without a work tree or git directory named (``init``).
    """
    where = [] if tree is None else [f"--git-dir={git_dir}", f"--work-tree={tree}"]
    argv = [
        "git", *where,
        "-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
        "-c", "user.name=brainhands", "-c", "user.email=brainhands@localhost", "-c", "commit.gpgsign=false",
        *args,
    ]
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.devnull, "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}
    for _ in range(200):
        done = subprocess.run(argv, cwd=tree or git_dir.parent, env={**base, **(env or {})}, capture_output=True,
                              timeout=_GIT_TIMEOUT)
        # Another service (the fs and the sandbox hand of one session) holds the index for a moment: wait for it.
        if done.returncode == 0 or b"index.lock" not in done.stderr:
            break
        time.sleep(0.05)
    if check and done.returncode != 0:
        raise HandError(f"git {args[0]} failed in the workspace: {done.stderr.decode(errors='replace').strip()[:500]}")
    return done


def name_of_tenant(tenant: str) -> str:
    """The directory name of a tenant: its name when that is a plain name, else '~' and a hash of it."""
    if _NAME.match(tenant):
        return tenant
    return "~" + hashlib.sha256(tenant.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SessionWorkspace:
    """One session's workspace: its tree (the files), its git directory (the history) and whose it is."""

    tenant: str
    session: str
    path: Path

    @property
    def tree(self) -> Path:
        return self.path / "tree"

    @property
    def git_dir(self) -> Path:
        return self.path / "git"

    def git(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
        return _git(self.git_dir, self.tree, *args, **kwargs)

    def diff(self, max_bytes: int = _MAX_DIFF_BYTES) -> str:
        """The session's change since its source, as a unified diff (new, changed and deleted files)."""
        with tempfile.TemporaryDirectory(prefix="index-", dir=self.git_dir) as scratch:
            # A throwaway index: staging everything to compare must not change the workspace's own state.
            env = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
            self.git("read-tree", SOURCE_REF, env=env)
            self.git("add", "-A", ".", env=env)
            done = self.git("diff", "--cached", "--no-color", "--no-ext-diff", "--no-textconv", SOURCE_REF, env=env)
        out = done.stdout
        if len(out) > max_bytes:
            cut = out[:max_bytes].decode("utf-8", "ignore")
            return cut + f"\n[diff truncated at {max_bytes} of {len(out)} bytes]"
        return out.decode("utf-8", "replace")

    @property
    def parent(self) -> str:
        """The session this workspace was branched from ("" if none)."""
        try:
            return (self.git_dir / "brainhands-parent").read_text().strip()
        except FileNotFoundError:
            return ""

    def snapshot(self, message: str) -> str:
        """Commit the tree as it is now on the workspace's branch; the commit's id."""
        with _lock_of(self.git_dir):
            self.git("add", "-A", ".")
            self.git("commit", "-q", "--allow-empty", "--no-verify", "-m", message)
            return self.git("rev-parse", "HEAD").stdout.decode().strip()

    def merge(self, child: SessionWorkspace) -> str | None:
        """Merge child's tree (committed first) into this one; None if merged, else the conflicting hunks.

        A conflicting merge is undone: this tree stays as it was, and the hunks say what to reconcile.
        """
        tip = child.snapshot(f"work of session {child.session}")
        ref = f"refs/brainhands/children/{child.session}"
        with _lock_of(self.git_dir):
            self.git("fetch", "-q", "--no-tags", str(child.git_dir), f"+refs/heads/main:{ref}")
        self.snapshot(f"before merging session {child.session}")
        with _lock_of(self.git_dir):
            done = self.git("merge", "--no-ff", "--no-edit", "-q", "-m", f"merge session {child.session}", ref,
                            check=False)
            if done.returncode == 0:
                self.git("update-ref", f"refs/brainhands/merged/{child.session}", ref)
                return None
            conflicted = self.git("diff", "--name-only", "--diff-filter=U").stdout.decode().split()
            hunks = self.git("diff", "--no-color", "--no-ext-diff").stdout.decode("utf-8", "replace")
            self.git("merge", "--abort", check=False)
            tip_short = tip[:12]
        if not conflicted:  # not a conflict: git itself failed; say what it said
            raise HandError(f"merging session {child.session} failed: "
                            f"{(done.stderr or done.stdout).decode(errors='replace').strip()[:500]}")
        return (f"session {child.session} (commit {tip_short}) conflicts in {', '.join(conflicted)}:\n"
                f"{hunks[:_MAX_DIFF_BYTES]}")

    def unmerged(self) -> list[str]:
        """The sessions branched from this one whose change has not been merged here, in the order they branched."""
        with _lock_of(self.git_dir):
            refs = self.git("for-each-ref", "--sort=committerdate", "--format=%(refname)",
                            "refs/brainhands/forks/", "refs/brainhands/merged/").stdout.decode().split()
        forks = [r.removeprefix("refs/brainhands/forks/") for r in refs if r.startswith("refs/brainhands/forks/")]
        merged = {r.removeprefix("refs/brainhands/merged/") for r in refs if r.startswith("refs/brainhands/merged/")}
        return [session for session in forks if session not in merged]


_git_locks: dict[Path, threading.Lock] = {}
_git_locks_guard = threading.Lock()


def _lock_of(git_dir: Path) -> threading.Lock:
    """One lock per git directory in this process: calls of one session's workers must not share its index at once."""
    with _git_locks_guard:
        return _git_locks.setdefault(git_dir, threading.Lock())


@dataclass(frozen=True)
class Repo:
    """A git repository a session starts from: its URL and the branch, tag or commit to check out ("": its HEAD)."""

    url: str
    ref: str = ""

    def __str__(self) -> str:
        return f"{self.url}@{self.ref}" if self.ref else self.url


class SessionWorkspaces:
    """The workspaces under one root: found for a call from its tenant and session, made on first use."""

    def __init__(self, root: str | os.PathLike, sources: tuple[str, ...] = (), ttl: float | None = None,
                 repos: tuple[str, ...] = (), git_token: str | None = None, budget: DiskBudget | None = None):
        path = Path(root)
        if not path.is_dir():
            raise ValueError(f"workspaces root {str(root)!r} is not a directory")
        self.root = Path(os.path.realpath(path))
        self.sources = tuple(Path(os.path.realpath(s)) for s in sources)
        self.ttl = ttl
        self.repos = repos
        self._git_token = git_token
        self.budget = budget or DiskBudget(WorkspacesConfig.model_fields["max_bytes"].default,
                                           WorkspacesConfig.model_fields["max_files"].default)
        self._making: dict[Path, asyncio.Lock] = {}
        self._swept = 0.0  # time.monotonic() of the last sweep for expired workspaces

    @classmethod
    def from_config(cls, config: WorkspacesConfig) -> SessionWorkspaces | None:
        """The workspaces config names, or None when per-session workspaces are not configured."""
        if config.root is None:
            return None
        try:
            return cls(config.root, config.sources, config.ttl, config.repos, config.git_token,
                       DiskBudget(config.max_bytes, config.max_files))
        except ValueError as exc:
            raise ValueError(f"{WORKSPACES_ENV}: {exc}") from None

    def locate(self, ctx: Context) -> SessionWorkspace:
        """Whose workspace a call may use, from the gateway-set tenant and the session id; HandError if none."""
        tenant = ctx.metadata.get(md.TENANT, "")
        if not tenant:
            raise HandError("session workspaces are only served through the gateway "
                            "(no authenticated tenant came with this call)")
        session = ctx.session_id
        if not session:
            raise HandError("this call belongs to no session, so it has no workspace: "
                            f"send {md.SESSION_ID} (brainhands run and the brain do)")
        return self.of(tenant, session)

    def of(self, tenant: str, session: str) -> SessionWorkspace:
        """The workspace of a session of tenant (made or not); HandError if the id cannot name one."""
        if not _NAME.match(session):
            raise HandError(f"session id {session[:80]!r} cannot name a workspace: use letters, digits, '.', '_' "
                            "or '-' (at most 128, starting with a letter or digit)")
        return SessionWorkspace(tenant, session, self.root / name_of_tenant(tenant) / session)

    async def provision(self, ctx: Context) -> SessionWorkspace:
        """The call's session workspace, made if this is the session's first call: branched from its parent
        session's workspace (x-brainhands-workspace-parent, same tenant), else from its source, else empty."""
        ws = self.locate(ctx)
        await self._sweep()
        if _used(ws):
            return ws
        parent_id = ctx.metadata.get(md.WORKSPACE_PARENT, "")
        if not parent_id or parent_id == ws.session:
            return await self._provisioned(ws, ctx)
        parent = await self._provisioned(self.of(ws.tenant, parent_id), ctx)
        if ctx.metadata.get(md.WORKER_WORKSPACES) == "branch":
            return await self._provisioned(ws, ctx, parent)
        # Shared: the worker's session names its parent's workspace (a link beside it, in the same tenant's folder).
        await asyncio.to_thread(_link, ws, parent)
        _used(ws)
        return ws

    async def _provisioned(self, ws: SessionWorkspace, ctx: Context,
                           parent: SessionWorkspace | None = None) -> SessionWorkspace:
        if ws.path.is_dir():
            return ws
        lock = self._making.setdefault(ws.path, asyncio.Lock())
        async with lock:
            if ws.path.is_symlink() and not ws.path.exists():  # it shared a workspace that has expired since
                with contextlib.suppress(FileNotFoundError):
                    ws.path.unlink()
            if not ws.path.is_dir():
                source = None if parent is not None else self._source(ctx.metadata.get(md.WORKSPACE, ""))
                try:
                    await asyncio.to_thread(self._make, ws, source, parent)
                except (OSError, subprocess.SubprocessError) as exc:
                    raise HandError(f"the session's workspace could not be made: {exc}") from None
        self._making.pop(ws.path, None)
        _used(ws)
        return ws

    async def _sweep(self) -> None:
        """Remove the workspaces no call has used for ttl; at most once per tenth of it (and of a minute).

        Without a ttl only what a crash left half-made or half-removed goes, at most once an hour."""
        every = _LEFTOVER_AGE if self.ttl is None else min(self.ttl / 10, 60.0)
        if time.monotonic() - self._swept < every:
            return
        self._swept = time.monotonic()
        await asyncio.to_thread(self.remove_expired)

    def remove_expired(self, now: float | None = None) -> list[Path]:
        """Remove every workspace whose last use is more than ttl ago; the ones removed.

        Also removed, ttl or not: staging directories (.new-*, .gone-*) older than an hour, which only a service
        that died while making or removing a workspace leaves (one being made now is younger).
        """
        now = time.time() if now is None else now
        cutoff = now - self.ttl if self.ttl is not None else None
        removed = []
        for tenant_dir in self.root.iterdir():
            if not tenant_dir.is_dir() or tenant_dir.is_symlink():
                continue
            for path in tenant_dir.iterdir():
                if path.is_symlink():  # a worker's name for its parent's workspace: goes when that one does
                    if not path.exists():
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                    continue
                if path.name.startswith((".new-", ".gone-")) and path.is_dir():
                    with contextlib.suppress(FileNotFoundError):
                        if path.stat().st_mtime < now - _LEFTOVER_AGE:
                            shutil.rmtree(path, ignore_errors=True)
                            removed.append(path)
                    continue
                if cutoff is None or path.name.startswith(".") or not path.is_dir():
                    continue
                try:
                    if (path / _USED).stat().st_mtime >= cutoff:
                        continue
                    # Renamed first: a call arriving now finds no half-removed workspace, it makes a new one.
                    gone = tenant_dir / f".gone-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
                    os.rename(path, gone)
                except FileNotFoundError:
                    continue  # another service removed it first (or it is being made)
                shutil.rmtree(gone, ignore_errors=True)
                removed.append(path)
        return removed

    def _source(self, named: str) -> Path | Repo | None:
        """What a session starts from (None: empty): a local directory or a repository this service allows."""
        if not named:
            return None
        if "://" in named:
            return self._repo(named)
        if "\x00" in named or not os.path.isabs(named):
            raise HandError(f"workspace source {named[:200]!r} must be an absolute directory path")
        real = Path(os.path.realpath(named))
        if not any(real == allowed or real.is_relative_to(allowed) for allowed in self.sources):
            raise HandError(f"workspace source {named[:200]!r} is not one this service may copy from "
                            f"(its {SOURCES_ENV})")
        if not real.is_dir():
            raise HandError(f"workspace source {named[:200]!r} is not a directory")
        return real

    def _repo(self, named: str) -> Repo:
        url, ref = named, ""
        head, sep, tail = named.rpartition("@")
        if sep and "/" not in tail and "://" in head:
            url, ref = head, tail
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise HandError("a repository URL may not carry credentials: the service presents its own token")
        if not any(url.startswith(prefix) for prefix in self.repos):
            raise HandError(f"repository {url[:200]!r} is not one this service may clone (its {REPOS_ENV})")
        if ref and (ref.startswith("-") or not re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", ref)):
            raise HandError(f"ref {ref[:80]!r} is not a branch, tag or commit name")
        return Repo(url, ref)

    def _clone(self, repo: Repo, fresh: SessionWorkspace) -> None:
        """Clone repo into the fresh workspace's git directory and check its ref out in the tree.

        The token goes to git in its environment only (GIT_CONFIG_*: not the command line, which any user can read
        in /proc, and not the git directory's config); the sandbox never sees the git directory at all.
        """
        env: dict[str, str] = {}
        if self._git_token:
            basic = base64.b64encode(f"x-access-token:{self._git_token}".encode()).decode()
            env = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                   "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
        shutil.rmtree(fresh.git_dir)
        _git(fresh.git_dir, None, "clone", "-q", "--bare", "--", repo.url, str(fresh.git_dir), env=env)
        fresh.tree.mkdir()
        target = repo.ref or "HEAD"
        fresh.git("update-ref", "refs/heads/main", f"{target}^{{commit}}" if repo.ref else "HEAD")
        fresh.git("symbolic-ref", "HEAD", "refs/heads/main")
        fresh.git("reset", "-q", "--hard", "main")

    def _make(self, ws: SessionWorkspace, source: Path | Repo | None, parent: SessionWorkspace | None = None) -> None:
        tenant_dir = ws.path.parent
        # 0711: a sandbox run's own uid must pass through to bind its tree, but may not list whose trees exist.
        tenant_dir.mkdir(mode=0o711, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=tenant_dir))
        try:
            os.chmod(staging, 0o711)
            fresh = SessionWorkspace(ws.tenant, ws.session, staging)
            fresh.git_dir.mkdir(mode=0o700)
            # Bare: the git directory records no work tree, so it stays valid when renamed into place.
            _git(fresh.git_dir, None, "init", "-q", "--bare", "--initial-branch=main", str(fresh.git_dir))
            (fresh.git_dir / "info").mkdir(exist_ok=True)
            (fresh.git_dir / "info" / "exclude").write_text(_EXCLUDE)
            if parent is not None:
                # A branch of the parent's tree as it is now: the child's change is what it does from here.
                tip = parent.snapshot(f"fork for session {ws.session}")
                with _lock_of(parent.git_dir):
                    parent.git("update-ref", f"refs/brainhands/forks/{ws.session}", tip)
                fresh.tree.mkdir()
                fresh.git("fetch", "-q", "--no-tags", str(parent.git_dir), f"refs/brainhands/forks/{ws.session}:refs/heads/main")
                fresh.git("reset", "-q", "--hard", "main")
                (fresh.git_dir / "brainhands-parent").write_text(f"{parent.session}\n")
            elif isinstance(source, Repo):
                self._clone(source, fresh)
                (fresh.git_dir / "info").mkdir(exist_ok=True)
                (fresh.git_dir / "info" / "exclude").write_text(_EXCLUDE)
            elif source is not None and os.path.lexists(source / ".git"):
                _from_local_repository(source, fresh)
            else:
                if source is not None:
                    shutil.copytree(source, fresh.tree, symlinks=True, ignore=shutil.ignore_patterns(".git"))
                else:
                    fresh.tree.mkdir()
                fresh.git("add", "-A", ".")
                fresh.git("commit", "-q", "--allow-empty", "--no-verify", "-m", f"source: {source or 'empty'}")
            os.chmod(fresh.tree, 0o755)
            (fresh.git_dir / "brainhands-source").write_text(f"{source or ''}\n")
            fresh.git("update-ref", SOURCE_REF, "HEAD")
            (staging / _USED).touch()
            try:
                os.rename(staging, ws.path)
            except OSError:
                if not ws.path.is_dir():  # not "another service made it first"
                    raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(staging)


_USED = "used"  # a file in each workspace whose mtime is its last use
_LEFTOVER_AGE = 3600.0  # seconds after which a staging directory is a crash's leftover, not work in progress


def _from_local_repository(source: Path, fresh: SessionWorkspace) -> None:
    """Make the fresh workspace from the git repository whose top is source: its history, and its files as they are.

    The git directory is ``clone --bare --local`` of the source's: objects hard-linked where both lie on one file
    system (git never rewrites an object file, so sharing them is safe), copied otherwise. Not ``--shared``: its
    alternates would point into the user's repository, and a gc there would take objects this history needs. The
    user's repository is only read (no ref, worktree or config is added to it), and the clone's ``origin`` is
    dropped. The tree is what the user sees (tracked files and untracked ones git does not ignore, as they are on
    disk now), committed on top of the source's HEAD as "source: working tree of DIR" when it differs from it.
    """
    dotgit = source / ".git"
    reading = {"GIT_OPTIONAL_LOCKS": "0"}  # git may refresh a repository's index on a read; not the user's
    probe = _git(dotgit, source, "rev-parse", "--path-format=absolute", "--git-common-dir", env=reading, check=False)
    if probe.returncode != 0:
        raise HandError(f"workspace source {source} has a .git that git cannot read as a repository "
                        f"({probe.stderr.decode(errors='replace').strip()[:300]}): repair it, or remove it to start "
                        "the workspace from a plain copy")
    common = probe.stdout.decode().strip()
    head = _git(dotgit, source, "rev-parse", "--verify", "-q", "HEAD^{commit}", env=reading, check=False)
    head_commit = head.stdout.decode().strip() if head.returncode == 0 else ""  # "": no commit yet
    tracked, submodules = [], []
    for entry in _git(dotgit, source, "ls-files", "-z", "--stage", env=reading).stdout.split(b"\0"):
        if entry:
            info, _, path = entry.partition(b"\t")
            (submodules if info.startswith(b"160000 ") else tracked).append(os.fsdecode(path))
    if submodules:
        raise HandError(f"workspace source {source} has submodules ({', '.join(sorted(set(submodules))[:5])}), which "
                        "a workspace cannot take yet: give a directory without them (a copy of the tree)")
    untracked = _git(dotgit, source, "ls-files", "-z", "--others", "--exclude-standard", env=reading).stdout

    shutil.rmtree(fresh.git_dir)
    _git(fresh.git_dir, None, "clone", "-q", "--bare", "--local", "--", common, str(fresh.git_dir))
    fresh.tree.mkdir()
    fresh.git("remote", "remove", "origin")
    fresh.git("symbolic-ref", "HEAD", "refs/heads/main")
    if head_commit:
        fresh.git("update-ref", "refs/heads/main", head_commit)
        fresh.git("read-tree", "main")
    else:
        fresh.git("update-ref", "-d", "refs/heads/main")
    (fresh.git_dir / "info").mkdir(exist_ok=True)
    (fresh.git_dir / "info" / "exclude").write_text(_EXCLUDE)
    _copy_listed(source, fresh.tree, [*tracked, *(os.fsdecode(p) for p in untracked.split(b"\0") if p)])
    fresh.git("add", "-A", ".")
    if not head_commit or fresh.git("diff", "--cached", "--quiet", check=False).returncode != 0:
        fresh.git("commit", "-q", "--allow-empty", "--no-verify", "-m", f"source: working tree of {source}")


def _copy_listed(source: Path, tree: Path, paths: list[str]) -> None:
    """Copy the files named (relative to source) into tree; symlinks stay symlinks and none is followed.

    A path that is gone (deleted in the working tree), names a directory (an untracked nested repository) or lies
    below a symlink in source (git lists none, but the tree is not ours to trust) is left out.
    """
    real_dirs: dict[str, bool] = {}
    for rel in sorted(set(paths)):
        if rel.endswith("/"):
            continue
        parent = os.path.dirname(rel)
        if parent not in real_dirs:
            real_dirs[parent] = os.path.realpath(source / parent) == os.path.join(source, parent).rstrip("/")
        if not real_dirs[parent]:
            continue
        try:
            mode = os.lstat(source / rel).st_mode
        except FileNotFoundError:
            continue
        dest = tree / rel
        if stat.S_ISLNK(mode):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(source / rel), dest)
        elif stat.S_ISREG(mode):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, dest, follow_symlinks=False)


def _link(ws: SessionWorkspace, parent: SessionWorkspace) -> None:
    """Make ws's session name parent's workspace (a relative link in the tenant's folder), unless it has one."""
    if ws.path.is_symlink() or ws.path.is_dir():
        return
    with contextlib.suppress(FileExistsError):  # another service linked it first
        os.symlink(parent.path.name, ws.path)


def _used(ws: SessionWorkspace) -> bool:
    """Mark the workspace used now; False if it does not exist."""
    try:
        os.utime(ws.path / _USED)
    except FileNotFoundError:
        return False
    return True


def workspaces_from_env(environ: Mapping[str, str] | None = None) -> SessionWorkspaces | None:
    """The session workspaces BRAINHANDS_WORKSPACES configures, or None when it is unset (one shared root)."""
    return SessionWorkspaces.from_config(WorkspacesConfig.from_env(environ))
