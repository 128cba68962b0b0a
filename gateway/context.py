"""Per-call context the gateway's interceptors set and its routing, metrics and log line read."""

from __future__ import annotations

import contextvars

#: The tenant making the current call; the auth interceptor sets it, metrics and the call log read it.
current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("current_tenant", default="anonymous")
