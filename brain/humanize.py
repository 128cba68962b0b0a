"""Durations written for people: the one formatter the live view, the timeline page and the CLI share."""

from __future__ import annotations

import json
from typing import Any


def format_duration(seconds: float | None, *, precise: bool = False) -> str:
    """'20ms', '1.5s', '22s', '1m02s' (a terminal line); precise, for a page with room: '20 ms', '1.50 s', '1 m 02.3 s'.

    None (not known yet) is ''; a negative span (clocks of two machines a little apart) counts as none.
    """
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    space = " " if precise else ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}{space}ms"
    if precise:
        if seconds < 60:
            return f"{seconds:.2f} s"
        return f"{int(seconds // 60)} m {seconds % 60:04.1f} s"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def summarize_input(name: str, value: Any, width: int = 48) -> str:
    """A short, one-line hint of what a call is about: the worker's task, the path, the command."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict):
        for key in ("task", "command", "pattern", "path", "code", "query", "url"):
            if isinstance(value.get(key), str) and value[key].strip():
                text = value[key]
                if key == "pattern" and isinstance(value.get("path"), str) and value["path"] not in ("", "."):
                    text = f"{text} in {value['path']}"
                break
        else:
            only = next(iter(value.values())) if len(value) == 1 else None
            text = only if isinstance(only, str) else json.dumps(value, ensure_ascii=False)
    else:
        text = json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
