"""Who may use a BrainService: API keys -> tenants, each with caps on what a Run may ask for; TLS for its port."""

from __future__ import annotations

import contextvars
import pathlib
from collections.abc import Mapping
from typing import Annotated, Any

import grpc
import structlog
import yaml
from pydantic import BeforeValidator, Field, model_validator

from brain.sessions import DEFAULT_TENANT
from hands import metadata as md
from hands.config import ConfigError, ConfigModel, Pem, invalid, string_list, whole
from hands.keys import KeyDigest, bearer_token, owner_of

log = structlog.get_logger("brain.auth")

#: The tenant whose call is being served; the auth interceptor sets it, every RPC scopes to it.
current_tenant: contextvars.ContextVar[BrainTenant | None] = contextvars.ContextVar("brain_tenant", default=None)

#: The limits a cap bounds, as RunLimits names them.
CAPPED_LIMITS = ("max_turns", "max_tool_calls", "token_budget", "max_parallel")


def _name(value: Any) -> str:
    import re

    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", value):
        raise ValueError(f"expected a name like 'team-a' (letters, digits, _ . -), got {value!r}")
    return value


class Caps(ConfigModel):
    """The most a Run of this tenant may ask for; unset: the service's own limits."""

    max_turns: whole(1) | None = None
    max_tool_calls: whole(1) | None = None
    token_budget: whole(1) | None = None
    max_parallel: whole(1) | None = None
    models: string_list("expected a list of model ids") | None = None  # None: any Claude model


class BrainTenant(ConfigModel):
    """A tenant of the brain service: its keys (``sha256:<hex>`` or ``env:VAR``), its caps and its approve rules."""

    name: Annotated[str, BeforeValidator(_name)]
    api_keys: tuple[KeyDigest, ...] = Field(repr=False)
    caps: Caps = Caps()
    #: hand-name globs whose calls wait for a person in every run of this tenant (added to the service's and the run's)
    approve: string_list("expected a list of hand-name globs") = ()

    @model_validator(mode="after")
    def _has_keys(self) -> BrainTenant:
        if not self.api_keys:
            raise invalid("api_keys", "expected a non-empty list of 'sha256:<hex>' or 'env:VAR'")
        return self

    def __repr__(self) -> str:
        return f"BrainTenant(name={self.name!r})"

    __str__ = __repr__


#: The only tenant of a brain service with no tenants configured (on 127.0.0.1 unless told otherwise).
LOCAL = BrainTenant.model_construct(name=DEFAULT_TENANT, api_keys=(), caps=Caps())


class BrainTls(ConfigModel):
    """TLS for the BrainService port: a certificate and key; client_ca makes it mTLS."""

    cert: Pem | None = Field(None, repr=False)
    key: Pem | None = Field(None, repr=False)
    client_ca: Pem | None = Field(None, repr=False)

    @model_validator(mode="after")
    def _pairs(self) -> BrainTls:
        if (self.cert is None) != (self.key is None):
            raise invalid("key" if self.key is None else "cert", "cert and key go together; set both or neither")
        if self.client_ca is not None and self.cert is None:
            raise invalid("client_ca", "client certificates need TLS; set cert and key")
        return self

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.cert is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.client_ca, require_client_auth=self.client_ca is not None
        )


class BrainAccess(ConfigModel):
    """The brain service's config file: ``tenants: [{name, api_keys, caps}]`` and ``tls``."""

    config_name = "brain config"

    tenants: tuple[BrainTenant, ...] = ()
    tls: BrainTls = BrainTls()

    @model_validator(mode="after")
    def _distinct(self) -> BrainAccess:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise invalid("tenants", "two tenants have the same name")
        return self

    @property
    def open(self) -> bool:
        return not self.tenants

    def authenticate(self, api_key: str | None) -> BrainTenant | None:
        if self.open:
            return LOCAL
        return owner_of(api_key, self.tenants)


def load_access(path: str | pathlib.Path, environ: Mapping[str, str] | None = None) -> BrainAccess:
    """Read a brain config file; ConfigError names the file and the bad key."""
    path = pathlib.Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read brain config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    import os

    try:
        return BrainAccess.parse(raw, context={"environ": os.environ if environ is None else environ,
                                               "base_dir": path.parent})  # fmt: skip
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}", key=exc.key, reason=exc.reason) from None


class BrainAuthInterceptor(grpc.aio.ServerInterceptor):
    """Every BrainService call carries a tenant's key (or, with no tenants configured, is the local tenant's)."""

    def __init__(self, access: BrainAccess):
        self._access = access

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        meta = md.as_dict(context.invocation_metadata())
        tenant = self._access.authenticate(bearer_token(meta.get(md.AUTHORIZATION)))
        if tenant is None:
            why = "the API key is not valid" if md.AUTHORIZATION in meta else "no API key"
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{why}: send 'authorization: Bearer <key>' with a key of the brain service's tenants "
                "(BRAINHANDS_BRAIN_KEY)",
            )
        current_tenant.set(tenant)
        structlog.contextvars.bind_contextvars(tenant=tenant.name)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith("/brain.v1.BrainService/"):
            return handler
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request, context):
                await self._authenticate(context)
                return await inner_uu(request, context)

            return handler._replace(unary_unary=unary_unary)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request, context):
                await self._authenticate(context)
                async for item in inner_us(request, context):
                    yield item

            return handler._replace(unary_stream=unary_stream)
        return handler


def check_caps(tenant: BrainTenant, requested: Mapping[str, int], effective: Mapping[str, int], model: str) -> dict:
    """The limits a Run gets under its tenant's caps; ValueError naming the cap a request goes over.

    requested: what the RunRequest asked for (0 or absent: nothing); effective: the limits it would get.
    A default above a cap is lowered to the cap; a request above it is refused.
    """
    caps = tenant.caps
    lowered: dict[str, int] = {}
    for name in CAPPED_LIMITS:
        cap = getattr(caps, name)
        if cap is None:
            continue
        if requested.get(name, 0) > cap:
            raise ValueError(
                f"limits.{name}: {requested[name]} is over this brain service's cap of {cap} for tenant {tenant.name!r}"
            )
        if effective[name] > cap:
            lowered[name] = cap
    if model and caps.models is not None and model not in caps.models:
        raise ValueError(
            f"model: {model[:80]!r} is not one tenant {tenant.name!r} may use here (allowed: {', '.join(caps.models)})"
        )
    return lowered
