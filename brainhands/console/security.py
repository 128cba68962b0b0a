"""Who is signed in (a tenant key in an HttpOnly, SameSite=Strict cookie), CSRF tokens, and the page's headers."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KEY_COOKIE = "brainhands_key"
LOGIN_COOKIE = "brainhands_login"  # a random value the login form must echo (login CSRF, before any key)

#: No inline script, no inline style, nothing from another origin: a hand's output can never run as code.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


class Guard:
    """Signs CSRF tokens with a secret made when the console starts (a restart signs everyone out of their forms)."""

    def __init__(self, secret: bytes | None = None):
        self._secret = secret or secrets.token_bytes(32)

    def key(self, request: Request) -> str | None:
        return request.cookies.get(KEY_COOKIE) or None

    def csrf_token(self, key: str) -> str:
        """The token every form of this signed-in key carries; bound to the key, so another key's token fails."""
        return hmac.new(self._secret, b"csrf:" + key.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, key: str, presented: str) -> bool:
        return hmac.compare_digest(self.csrf_token(key), presented or "")

    @staticmethod
    def login_ok(request: Request, presented: str) -> bool:
        cookie = request.cookies.get(LOGIN_COOKIE) or ""
        return bool(cookie) and hmac.compare_digest(cookie, presented or "")

    @staticmethod
    def set_key(response: Response, request: Request, key: str) -> None:
        response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path="/")
        response.delete_cookie(LOGIN_COOKIE, path="/")

    @staticmethod
    def new_login_token() -> str:
        return secrets.token_urlsafe(24)

    @staticmethod
    def set_login(response: Response, request: Request, token: str) -> None:
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/", max_age=3600)

    @staticmethod
    def clear(response: Response) -> None:
        response.delete_cookie(KEY_COOKIE, path="/")


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every HTTP response (pages, events, static files, errors)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
