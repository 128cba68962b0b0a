"""Hand names for MCP tools: NAME_ + tool name, made to fit the hand-name syntax, unique and stable."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from hands._hand import NAME_RE

#: The bridge's NAME prefix: short enough to leave room for the tool's name.
PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_INVALID = re.compile(r"[^a-z0-9_-]")
_MAX = 64
_SUFFIX = 9  # "_" + 8 hex digits of the tool name's sha256


def _suffixed(base: str, tool: str) -> str:
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    return f"{base[: _MAX - _SUFFIX]}_{digest}"


def fit(prefix: str, tool: str) -> str:
    """prefix_tool, lower-case, other characters as "_", cut to 64 with a hash of the tool name when longer."""
    base = _INVALID.sub("_", f"{prefix}_{tool}".lower())
    return base if len(base) <= _MAX else _suffixed(base, tool)


def hand_names(prefix: str, tools: Iterable[str]) -> dict[str, str]:
    """Tool name -> hand name, the same whatever order the server lists its tools in.

    When several tools fit to one name, a tool whose name needed no change keeps it and
    the others get a hash of their own name as a suffix, so adding a tool never renames
    another.
    """
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"MCP bridge name {prefix!r} must match {PREFIX_RE.pattern}")
    groups: dict[str, list[str]] = {}
    for tool in sorted(set(tools)):
        groups.setdefault(fit(prefix, tool), []).append(tool)
    names: dict[str, str] = {}
    for fitted, group in groups.items():
        if len(group) == 1:
            names[group[0]] = fitted
            continue
        for tool in group:
            names[tool] = fitted if f"{prefix}_{tool}" == fitted else _suffixed(fitted, tool)
    if len(set(names.values())) != len(names):  # two sha256 prefixes agreeing: not worth a scheme of its own
        raise ValueError(f"MCP tools {sorted(names)} do not get distinct hand names under {prefix!r}")
    assert all(NAME_RE.fullmatch(n) for n in names.values())
    return names
