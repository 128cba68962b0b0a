"""The console's web app: pages over BrainService and the gateway, live session pages fed by server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

import grpc
import jinja2
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from brain.humanize import format_duration
from brain.sessions import Event, SessionInfo
from brain.timeline import tree_order
from brain.timeline.render import stylesheet
from brainhands.console import views
from brainhands.console.clients import ConsoleClients, has_rpc, status_name, status_names, to_info
from brainhands.console.live import Children, LiveSessions
from brainhands.console.security import Guard, SecurityHeaders
from gateway.v1 import gateway_pb2


@dataclass(frozen=True)
class ConsoleConfig:
    brain: str
    gateway: str | None = None


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("brainhands.console", "templates"),
        autoescape=True,  # every value is text unless a template says otherwise (none does)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["status_name"] = status_name
    env.globals.update(backend_state=_enum_name(gateway_pb2.BackendState, "BACKEND_STATE_"),
                       backend_source=_enum_name(gateway_pb2.BackendSource, "BACKEND_SOURCE_"),
                       quota_kind=_enum_name(gateway_pb2.QuotaKind, "QUOTA_KIND_"), duration=_duration)
    return env


def _enum_name(enum, prefix: str):
    def name(value: int) -> str:
        try:
            return enum.Name(value).removeprefix(prefix).lower().replace("_", " ")
        except ValueError:
            return "unknown"

    return name


def _duration(value) -> str:
    seconds = value.ToTimedelta().total_seconds() if value is not None else 0.0
    return format_duration(seconds) if seconds else "—"


class Console:
    def __init__(self, config: ConsoleConfig, guard: Guard | None = None):
        self.config = config
        self.guard = guard or Guard()
        self.env = _templates()
        self.clients: ConsoleClients | None = None
        self.live_sessions = LiveSessions(lambda: self.clients, self._draw_live)

    # --- plumbing -------------------------------------------------------------------------------

    def page(self, request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        key = self.guard.key(request)
        context.setdefault("signed_in", bool(key))
        context.setdefault("csrf", self.guard.csrf_token(key) if key else "")
        context.setdefault("can_decide", has_rpc("Decide"))
        context.setdefault("can_say", has_rpc("Say"))
        context.setdefault("brain", self.config.brain)
        context.setdefault("gateway", self.config.gateway or "")
        html = self.env.get_template(name).render(request=request, **context)
        return HTMLResponse(html, status_code=status_code)

    def error(self, request: Request, status_code: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status_code=status_code, message=message)

    def rpc_error(self, request: Request, exc: grpc.aio.AioRpcError, what: str) -> Response:
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            response = RedirectResponse("/login?expired=1", status_code=303)
            self.guard.clear(response)
            return response
        if code == grpc.StatusCode.NOT_FOUND:
            return self.error(request, 404, f"{what}: not found")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return self.error(request, 403, f"{what}: not allowed with this key ({exc.details()})")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return self.error(request, 503, f"{what}: the brain service at {self.config.brain} does not answer ({exc.details()})")
        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
            return self.error(request, 409 if code == grpc.StatusCode.FAILED_PRECONDITION else 400, f"{what}: {exc.details()}")
        return self.error(request, 502, f"{what}: {code.name}: {exc.details()}")

    def signed_in(self, request: Request) -> str | None:
        return self.guard.key(request)

    async def form(self, request: Request) -> tuple[str, dict[str, str]] | Response:
        """The signed-in key and the posted form, or the response refusing it (no key, or a bad CSRF token)."""
        key = self.signed_in(request)
        if key is None:
            return RedirectResponse("/login", status_code=303)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not self.guard.csrf_ok(key, form.get("csrf", "")):
            return self.error(request, 403, "this form is stale or did not come from the console; reload the page and try again")
        return key, form

    # --- sign in and out --------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        return self._login_form(request, "", expired=bool(request.query_params.get("expired")))

    def _login_form(self, request: Request, message: str, *, expired: bool = False, status_code: int = 200) -> Response:
        token = self.guard.new_login_token()
        response = self.page(request, "login.html", status_code=status_code, message=message, expired=expired,
                             login_token=token, signed_in=False, csrf="")
        self.guard.set_login(response, request, token)
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if not self.guard.login_ok(request, str(form.get("login_token", ""))):
            return self.error(request, 403, "the sign-in form is stale; open the sign-in page again")
        key = str(form.get("key", "")).strip()
        if not key:
            return await self._login_again(request, "enter your tenant key")
        try:
            await self.clients.list_sessions(key, page_size=1)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return await self._login_again(request, "the brain service does not accept that key")
            return await self._login_again(request, f"the brain service at {self.config.brain} does not answer ({exc.code().name})")
        response = RedirectResponse("/sessions", status_code=303)
        self.guard.set_key(response, request, key)
        return response

    async def _login_again(self, request: Request, message: str) -> Response:
        return self._login_form(request, message, status_code=401)

    async def logout(self, request: Request) -> Response:
        result = await self.form(request)
        if isinstance(result, Response):
            return result
        response = RedirectResponse("/login", status_code=303)
        self.guard.clear(response)
        return response

    # --- pages ----------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/sessions" if self.signed_in(request) else "/login", status_code=303)

    async def sessions(self, request: Request) -> Response:
        key = self.signed_in(request)
        if key is None:
            return RedirectResponse("/login", status_code=303)
        status = request.query_params.get("status", "")
        if status and status not in status_names():
            return self.error(request, 400, f"status: unknown value {status!r} (one of {', '.join(status_names())})")
        try:
            found = await self.clients.list_sessions(key, status=status)
            views_of = await asyncio.gather(*(self._totals(key, s) for s in found))
        except grpc.aio.AioRpcError as exc:
            return self.rpc_error(request, exc, "sessions")
        now = time.time()
        rows = views.order_sessions([views.listed(to_info(s), tenant, totals, now) for s, (tenant, totals) in zip(found, views_of, strict=True)])
        return self.page(request, "sessions.html", sessions=rows, status=status, statuses=status_names())

    async def _totals(self, key: str, session) -> tuple[str, dict | None]:
        tenant = getattr(session, "tenant", "")
        if status_name(session.status) in ("running", "waiting"):
            return tenant, None
        try:
            view = await self.clients.get_session(key, session.session_id)
        except grpc.aio.AioRpcError:
            return tenant, None
        return view.tenant or tenant, view.totals

    async def session(self, request: Request) -> Response:
        key = self.signed_in(request)
        if key is None:
            return RedirectResponse("/login", status_code=303)
        sid = request.path_params["session_id"]
        try:
            view = await self.clients.get_session(key, sid)
            events = await self.clients.events_so_far(key, sid)
            children = await self._children(key, sid)
        except grpc.aio.AioRpcError as exc:
            return self.rpc_error(request, exc, f"session {sid}")
        live = views.session_page(view.info, events, children)
        return self.page(request, "session.html", s=live, live=live)

    async def _children(self, key: str, sid: str) -> Children:
        infos = [info for _, info in tree_order(sid, await self.live_sessions.listing(key))]
        loaded = await asyncio.gather(*(self.clients.events_so_far(key, info.id) for info in infos))
        return {info.id: (info, events) for info, events in zip(infos, loaded, strict=True)}

    async def live(self, request: Request) -> Response:
        """Server-sent events for one session page: an `update` (the live part of the page, re-drawn from the log)
        whenever events arrive, then `end` once the session has ended."""
        key = self.signed_in(request)
        if key is None:
            return Response("sign in first", status_code=401)
        sid = request.path_params["session_id"]
        try:
            after = int(request.headers.get("last-event-id") or request.query_params.get("after") or 0)
            view = await self.clients.get_session(key, sid)
        except ValueError:
            return Response("after: must be a whole number", status_code=400)
        except grpc.aio.AioRpcError as exc:
            return Response(exc.details() or exc.code().name, status_code=404 if exc.code() == grpc.StatusCode.NOT_FOUND else 502)
        return EventSourceResponse(self.live_sessions.follow(key, view.info, after), ping=15, send_timeout=30)

    def _draw_live(self, key: str, info: SessionInfo, events: list[Event], children: Children) -> tuple[str, str]:
        page = views.session_page(info, events, children)
        html = self.env.get_template("_live.html").render(s=page, csrf=self.guard.csrf_token(key),
                                                          can_decide=has_rpc("Decide"), can_say=has_rpc("Say"))
        return html, page.status

    async def fleet(self, request: Request) -> Response:
        key = self.signed_in(request)
        if key is None:
            return RedirectResponse("/login", status_code=303)
        backends, usage, backends_error, usage_error = [], None, "", ""
        if not self.config.gateway:
            backends_error = usage_error = "the console was started without --gateway"
        else:
            try:
                backends = await self.clients.backends(key)
            except grpc.aio.AioRpcError as exc:
                backends_error = _gateway_message(exc, "the backend list needs an operator key")
            try:
                usage = await self.clients.usage(key)
            except grpc.aio.AioRpcError as exc:
                usage_error = _gateway_message(exc, "this key may not read quota usage")
        return self.page(request, "fleet.html", backends=backends, usage=usage, backends_error=backends_error,
                         usage_error=usage_error)

    # --- what a person does ---------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        result = await self.form(request)
        if isinstance(result, Response):
            return result
        key, form = result
        sid, action = request.path_params["session_id"], request.path_params["action"]
        try:
            if action == "cancel":
                await self.clients.cancel(key, sid, form.get("reason", "").strip() or "cancelled in the console")
            elif action in ("approve", "deny") and has_rpc("Decide"):
                reason = form.get("reason", "").strip()
                if action == "deny" and not reason:
                    return self.error(request, 400, "deny: say why (the model reads the reason)")
                await self.clients.decide(key, sid, form.get("call_id", ""), action == "approve", reason)
            elif action in ("say", "interrupt") and has_rpc("Say"):
                text = form.get("text", "").strip()
                if not text:
                    return self.error(request, 400, f"{action}: the message must not be empty")
                await self.clients.say(key, sid, text, interrupt=action == "interrupt")
            else:
                return self.error(request, 404, f"{action}: not something this brain service can do")
        except grpc.aio.AioRpcError as exc:
            return self.rpc_error(request, exc, f"{action} {sid}")
        return RedirectResponse(f"/sessions/{quote(sid)}", status_code=303)


def _gateway_message(exc: grpc.aio.AioRpcError, denied: str) -> str:
    if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return f"{denied} ({exc.details()})"
    return f"the gateway does not answer: {exc.code().name} {exc.details()}"


def build_app(config: ConsoleConfig, *, guard: Guard | None = None) -> Starlette:
    console = Console(config, guard)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        console.clients = ConsoleClients(config.brain, config.gateway)
        try:
            yield
        finally:
            await console.clients.close()

    async def timeline_css(request: Request) -> Response:
        return Response(stylesheet(), media_type="text/css")

    static = resources.files("brainhands.console").joinpath("static")
    routes = [
        Route("/", console.home),
        Route("/login", console.login_page, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/sessions", console.sessions),
        Route("/sessions/{session_id}", console.session),
        Route("/sessions/{session_id}/live", console.live),
        Route("/sessions/{session_id}/{action}", console.act, methods=["POST"]),
        Route("/fleet", console.fleet),
        Route("/static/timeline.css", timeline_css),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)], lifespan=lifespan)
    app.state.console = console
    return app
