"""The session timeline: one self-contained HTML page drawing a session's turns and tool calls as bars on a time axis.

Stable hooks for tools and tests: every bar has data-kind ("turn" or "tool-call"), data-row (its row in the
chart, unique across the page), data-status (ok | error | rpc-error | cancelled | unfinished | not-run for
calls; model | synthesis for turns), data-start-ms and data-end-ms (from the start of the page's time axis);
tool calls add data-call-id, data-hand and data-code (the gRPC status name, "" when none was recorded).

The state drawn is brain.events.SessionState (the one fold of the log); layout.py places it on the axis,
render.py writes the HTML with timeline.css inline.
"""

from brain.timeline.layout import CALL_OUTCOMES
from brain.timeline.load import load_timeline
from brain.timeline.render import render_timeline
from brain.timeline.tree import MAX_TREE_DEPTH, session_tree, tree_order

__all__ = ["CALL_OUTCOMES", "MAX_TREE_DEPTH", "load_timeline", "render_timeline", "session_tree", "tree_order"]
