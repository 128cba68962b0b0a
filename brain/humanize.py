"""Durations written for people: the one formatter the live view, the timeline page and the CLI share."""

from __future__ import annotations


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
