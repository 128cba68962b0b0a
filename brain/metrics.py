"""The brain service's Prometheus metrics (brainhands_brain_*), counted from the session events it writes."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from brain import events as ev
from hands.metrics import MetricsHttp

#: session_finished / _failed / _cancelled -> the status label
_ENDS = {ev.SESSION_FINISHED: "finished", ev.SESSION_FAILED: "failed", ev.SESSION_CANCELLED: "cancelled"}
#: model_response usage key -> the kind label of brainhands_brain_tokens_total
_MODEL_KINDS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_creation",
}


class BrainMetrics(MetricsHttp):
    """Sessions, turns, tool calls and tokens of the sessions this brain service drives.

    tenant: the label of the tokens this brain spends (the tenant its gateway key belongs to; the brain
    cannot learn it from the gateway, so the service is told, e.g. BRAINHANDS_TENANT).
    """

    def __init__(self, tenant: str = "default") -> None:
        super().__init__(CollectorRegistry())
        self.tenant = tenant
        r = self.registry
        self.sessions = Counter(
            "brainhands_brain_sessions", "Sessions this brain started, and the ones it drove to an end, by status.",
            ["status"], registry=r,
        )  # fmt: skip
        self.running = Gauge("brainhands_brain_sessions_running", "Sessions this brain is driving now.", registry=r)
        self.turns = Counter("brainhands_brain_turns", "Model turns (responses), by model.", ["model"], registry=r)
        self.tool_calls = Counter(
            "brainhands_brain_tool_calls", "Tool calls that finished, by hand and outcome "
            "(ok, is_error, not_run, or the gRPC status of a failed call).", ["hand", "outcome"], registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "brainhands_brain_tokens", "Tokens spent, by tenant and kind (input, output, cache_read, cache_creation "
            "for the brain's own model; hand_input, hand_output for what hands reported).", ["tenant", "kind"], registry=r,
        )  # fmt: skip
        self.approvals_waiting = Gauge(
            "brainhands_brain_approvals_waiting", "Tool calls waiting for a person's approval (0 until approvals exist).",
            registry=r,
        )  # fmt: skip
        self.adopted = Counter(
            "brainhands_brain_sessions_adopted", "Sessions this brain took over from the log, by how: wake (a Wake "
            "or a decision asked it to) or orphan (--adopt found it with no brain driving it).", ["how"], registry=r,
        )  # fmt: skip
        for how in ("wake", "orphan"):
            self.adopted.labels(how)
        self.approvals_waiting.set(0)
        for status in ("started", "finished", "failed", "cancelled"):
            self.sessions.labels(status)  # present at 0, so a rate() has a series from the start

    def track_running(self, count: Callable[[], int]) -> None:
        self.running.set_function(lambda: float(count()))

    def observe(self, event) -> None:
        """Count one session event as it is written."""
        d = event.data
        kind = event.type
        if kind == ev.SESSION_STARTED:
            self.sessions.labels("started").inc()
        elif kind in _ENDS:
            self.sessions.labels(_ENDS[kind]).inc()
        elif kind == ev.MODEL_RESPONSE:
            self.turns.labels(d.get("model") or "").inc()
            for key, label in _MODEL_KINDS.items():
                tokens = int((d.get("usage") or {}).get(key) or 0)
                if tokens:
                    self.tokens.labels(self.tenant, label).inc(tokens)
        elif kind == ev.TOOL_CALL_FINISHED:
            if d.get("status") == ev.NOT_RUN:
                outcome = "not_run"
            elif d.get("status", "OK") != "OK":
                outcome = d["status"]
            else:
                outcome = "is_error" if d.get("is_error") else "ok"
            self.tool_calls.labels(d.get("name", ""), outcome).inc()
            usage = d.get("usage") or {}
            for key, label in (("input_tokens", "hand_input"), ("output_tokens", "hand_output")):
                tokens = int(usage.get(key) or 0)
                if tokens:
                    self.tokens.labels(self.tenant, label).inc(tokens)

    def publisher(self, publish: Callable) -> Callable:
        """publish (a Brain's on_event), counting each event first."""

        def on_event(event) -> None:
            self.observe(event)
            publish(event)

        return on_event
