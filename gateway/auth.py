"""Who may call what, and how much: authentication, authorization and quota admission on the gateway's front."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter

from gateway.config import GatewayConfig
from gateway.context import current_tenant
from gateway.metrics import GatewayMetrics
from gateway.quotas import (
    ADMITTED,
    Decision,
    Lease,
    QuotaStore,
    QuotaStoreUnavailable,
    holding,
    open_store,
    reservations,
)
from gateway.tenants import ANONYMOUS, Tenant, Tenants, bearer_token
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.wire import hand_name, response_usage
from hands import metadata as md
from hands import tracing
from hands.serving import note_call
from hands.v1 import hands_pb2

log = structlog.get_logger("gateway.auth")

EXECUTE = "/hands.v1.HandService/Execute"
DESCRIBE = "/hands.v1.HandService/Describe"
QUOTA_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name
RETRY_AFTER_MS = "retry-after-ms"
#: The tenant label of calls whose key was missing or wrong.
UNAUTHENTICATED = "unauthenticated"

_KINDS = {
    "rate": gateway_pb2.QUOTA_KIND_RATE,
    "concurrency": gateway_pb2.QUOTA_KIND_CONCURRENCY,
    "calls": gateway_pb2.QUOTA_KIND_CALLS,
    "tokens": gateway_pb2.QUOTA_KIND_TOKENS,
}


class Access:
    """Tenants, the quota store and the fail-open policy, with the interceptor and QuotaService that use them."""

    def __init__(
        self,
        tenants: Tenants,
        store: QuotaStore,
        metrics: GatewayMetrics,
        *,
        fail_open: bool = False,
        known_hand: Callable[[str], bool] = lambda name: True,
    ):
        self.tenants = tenants
        self.store = store
        self.fail_open = fail_open
        self._metrics = metrics
        self._known_hand = known_hand  # only names the gateway routes become metric labels
        self.denials = Counter(
            "brainhands_gateway_quota_denials",
            "Calls refused RESOURCE_EXHAUSTED, by tenant, hand and the rule that refused them.",
            ["tenant", "hand", "rule"],
            registry=metrics.registry,
        )
        self.store_errors = Counter(
            "brainhands_gateway_quota_store_errors",
            "Quota store calls that failed (store unreachable), by what the gateway did about the call.",
            ["action"],
            registry=metrics.registry,
        )
        self._describe_cache: dict[str, tuple[bytes, bytes]] = {}
        self.interceptor = AccessInterceptor(self)

    @classmethod
    def from_config(
        cls, config: GatewayConfig, metrics: GatewayMetrics, *, known_hand: Callable[[str], bool] = lambda name: True
    ) -> Access:
        store = open_store(config.quota_store, lease_seconds=config.quota_lease)
        return cls(config.tenants, store, metrics, fail_open=config.fail_open, known_hand=known_hand)

    def register(self, server: grpc.aio.Server) -> list[str]:
        """Add QuotaService to the gateway's server."""
        gateway_pb2_grpc.add_QuotaServiceServicer_to_server(QuotaServicer(self), server)
        return [QUOTA_SERVICE]

    async def close(self) -> None:
        await self.store.close()

    # -- the steps of a call -------------------------------------------------------------------------

    async def authenticate(self, context: grpc.aio.ServicerContext, started: float | None = None) -> Tenant:
        """The caller's tenant, set as the call's tenant; aborts UNAUTHENTICATED. Keys are never logged."""
        meta = md.as_dict(context.invocation_metadata())
        tenant = self.tenants.authenticate(bearer_token(meta.get(md.AUTHORIZATION)))
        if tenant is None:
            why = "the API key is not valid" if md.AUTHORIZATION in meta else "no API key"
            details = f"{why}: send 'authorization: Bearer <key>' with a key from the gateway's tenants"
            if started is None:  # not an Execute: no call to count
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)
            await self.refuse(context, grpc.StatusCode.UNAUTHENTICATED, details, "", UNAUTHENTICATED, started)
        current_tenant.set(tenant.name)
        structlog.contextvars.bind_contextvars(tenant=tenant.name)
        return tenant

    async def admit(self, tenant: Tenant, hand: str, rules, context, started: float) -> Decision:
        """Admit the call against every matching rule, or abort RESOURCE_EXHAUSTED / UNAVAILABLE.

        A token rule's reservation is the call's own budget (x-brainhands-budget-tokens) or the rule's
        reserve, the tighter of the two; the outer call of a nested one (depth > 0) has reserved for it.
        """
        try:
            reserve = reservations(rules, _call_budget(md.as_dict(context.invocation_metadata())))
            decision = await self.store.admit(rules, uuid.uuid4().hex, reserve)
        except QuotaStoreUnavailable as exc:
            if self.fail_open:
                tracing.set_attributes(brainhands__quota__decision="admitted_fail_open")
                self.store_errors.labels("admitted").inc()
                log.warning("quota store down; admitting without a quota check (fail_open: true)", error=str(exc))
                return ADMITTED
            self.store_errors.labels("refused").inc()
            tracing.set_attributes(brainhands__quota__decision="refused_store_down")
            log.error("quota store down; refusing the call (fail_open: false)", error=str(exc))
            await self.refuse(
                context, grpc.StatusCode.UNAVAILABLE, f"the quota store is down, so calls are refused: {exc}",
                hand, tenant.name, started,
            )  # fmt: skip
        if decision.admitted:
            tracing.set_attributes(brainhands__quota__decision="admitted")
            return decision
        rule = decision.rule
        tracing.set_attributes(brainhands__quota__decision="denied", brainhands__quota__rule=rule.id)
        label = self._label(hand)
        self.denials.labels(tenant.name, label, rule.id).inc()
        retry_ms = decision.retry_after_ms
        message = f"quota exceeded for tenant {tenant.name!r}: {rule.describe()} ({rule.id}); retry in {retry_ms} ms"
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(retry_ms)
        failure = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"tenant:{tenant.name}",
                    description=f"{v.rule.describe()}; admits again in {round(v.retry_after * 1000)} ms",
                    quota_id=v.rule.id,
                    quota_metric=v.rule.kind,
                    quota_value=v.rule.limit,
                )
                for v in decision.violations
            ]
        )
        status = status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[_pack(retry), _pack(failure)]
        )
        rich = rpc_status.to_status(status)
        await self.refuse(
            context, rich.code, rich.details, hand, tenant.name, started,
            trailing=(*rich.trailing_metadata, (RETRY_AFTER_MS, str(retry_ms))),
        )  # fmt: skip
        raise AssertionError("unreachable: abort raises")

    async def charge(self, rules, response, hand: str, leases: tuple[Lease, ...] = ()) -> None:
        """Charge the tokens a finished call reports in its usage to its token rules, settling its reservations."""
        if not any(rule.kind == "tokens" for rule in rules):
            return
        try:
            if isinstance(response, bytes | bytearray):
                tokens = sum(response_usage(bytes(response)))
            else:
                tokens = response.usage.input_tokens + response.usage.output_tokens
        except DecodeError:
            return  # the reservations are released with the call's other leases
        try:
            await self.store.charge_tokens(rules, tokens, leases)
        except QuotaStoreUnavailable as exc:
            self.store_errors.labels("uncharged").inc()
            log.error(
                "quota store down; tokens of a finished call not charged", hand=hand, tokens=tokens, error=str(exc)
            )

    def filter_describe(self, tenant: Tenant, raw: bytes) -> bytes:
        """Describe bytes with only the hands tenant may use (cached until the route table changes)."""
        if "*" in tenant.allow:
            return raw
        cached = self._describe_cache.get(tenant.name)
        if cached is not None and cached[0] is raw:
            return cached[1]
        response = hands_pb2.DescribeResponse.FromString(raw)
        kept = [spec for spec in response.hands if tenant.may_use(spec.name)]
        filtered = hands_pb2.DescribeResponse(hands=kept).SerializeToString()
        self._describe_cache[tenant.name] = (raw, filtered)
        return filtered

    async def refuse(
        self, context, code: grpc.StatusCode, details: str, hand: str, tenant: str, started: float, *, trailing=()
    ):
        """Abort a call the gateway will not route, with the same log line and metric a routed call gets."""
        seconds = time.perf_counter() - started
        label = self._label(hand)
        self._metrics.observe_call(label, tenant, code.name, seconds)
        if tracing.enabled():  # the call's span, named as a routed call's is, with why it was refused
            span = tracing.current_span()
            if span is not None:
                span.update_name(f"gateway {label}")
            tracing.set_attributes(brainhands__hand=label, brainhands__tenant=tenant, brainhands__code=code.name)
        note_call(hand=label, tenant=tenant, backend="", attempts=0)
        await context.abort(code, details, trailing_metadata=tuple(trailing))

    def _label(self, hand: str) -> str:
        return hand if hand and self._known_hand(hand) else "unknown"


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Wraps HandService and QuotaService handlers: authenticate, authorize, admit, run, release, charge."""

    def __init__(self, access: Access):
        self._access = access

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary
        access = self._access
        if method == EXECUTE:

            async def execute(request, context):
                started = time.perf_counter()
                tenant = await access.authenticate(context, started)
                try:
                    name = request.name if isinstance(request, hands_pb2.ExecuteRequest) else hand_name(request)
                except (DecodeError, UnicodeDecodeError):
                    return await inner(request, context)  # the front answers INVALID_ARGUMENT
                if not tenant.may_use(name):
                    await access.refuse(
                        context, grpc.StatusCode.PERMISSION_DENIED,
                        f"tenant {tenant.name!r} may not use the hand {name[:64]!r}", name, tenant.name, started,
                    )  # fmt: skip
                rules = tenant.rules_for(name)
                if not rules:
                    tracing.set_attributes(brainhands__quota__decision="no_quota")
                    return await inner(request, context)
                decision = await access.admit(tenant, name, rules, context, started)
                async with holding(access.store, decision.leases):
                    response = await inner(request, context)
                    # Settled while still held: a reservation leaves in the same step its real usage arrives.
                    await access.charge(rules, response, name, decision.leases)
                return response

            return handler._replace(unary_unary=execute)
        if method == DESCRIBE:

            async def describe(request, context):
                tenant = await access.authenticate(context)
                response = await inner(request, context)
                if isinstance(response, bytes | bytearray):
                    return access.filter_describe(tenant, bytes(response))
                kept = [spec for spec in response.hands if tenant.may_use(spec.name)]
                return hands_pb2.DescribeResponse(hands=kept)

            return handler._replace(unary_unary=describe)
        if method.startswith(f"/{QUOTA_SERVICE}/"):

            async def authenticated(request, context):
                await access.authenticate(context)
                return await inner(request, context)

            return handler._replace(unary_unary=authenticated)
        return handler


class QuotaServicer(gateway_pb2_grpc.QuotaServiceServicer):
    """GetUsage: a tenant reads its own quota usage (the interceptor has authenticated it)."""

    def __init__(self, access: Access):
        self._access = access

    async def GetUsage(self, request: gateway_pb2.GetUsageRequest, context) -> gateway_pb2.GetUsageResponse:
        caller = current_tenant.get()
        wanted = request.tenant or caller
        tenants = self._access.tenants
        if wanted != caller and not tenants.open:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"tenant {caller!r} may read only its own usage, not {wanted[:64]!r}"
            )
        if tenants.open:  # an open gateway has only the anonymous tenant, and no quotas
            tenant = Tenant(name=ANONYMOUS) if wanted == ANONYMOUS else None
        else:
            tenant = tenants.get(wanted)
        if tenant is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no tenant named {wanted[:64]!r}")
        try:
            usages = await self._access.store.usage(tenant.quotas)
        except QuotaStoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the quota store is down: {exc}")
        out = gateway_pb2.GetUsageResponse(tenant=tenant.name)
        for usage in usages:
            rule = usage.rule
            entry = out.quotas.add(
                rule=rule.id, hands=rule.hands, kind=_KINDS[rule.kind], limit=usage.limit, used=usage.used
            )
            if rule.kind == "rate":
                entry.rate = rule.limit
            if rule.window:
                entry.window.FromMilliseconds(round(rule.window * 1000))
                entry.resets_in.FromMilliseconds(round(usage.resets_in * 1000))
        return out


def _call_budget(meta: dict[str, str]) -> int | None:
    """The tokens a call says it may spend (x-brainhands-budget-tokens); None for a nested or unbudgeted call."""
    try:
        if int(meta.get(md.DEPTH, "0")) > 0:
            return None  # the brain's call to the hand that made this one reserved the budget it handed down
    except ValueError:
        pass
    raw = meta.get(md.BUDGET_TOKENS, "")
    return int(raw) if raw.isdigit() else None


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
