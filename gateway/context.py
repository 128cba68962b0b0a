"""Per-call context the gateway's interceptors set and its routing, metrics and log line read."""

from __future__ import annotations

import contextvars

#: The tenant making the current call; the auth interceptor sets it, metrics and the call log read it.
current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("current_tenant", default="anonymous")

#: Who is calling RegistryService: a registrant's name, or LOOPBACK for the embedded stack (no registrants configured).
current_registrant: contextvars.ContextVar[str] = contextvars.ContextVar("current_registrant", default="")
LOOPBACK = "(loopback)"

#: Metadata the gateway sets on the call it forwards (delegation, depth, budget), in place of what the caller sent.
current_forward: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "current_forward", default=()
)
