"""The web console: sessions, one session live, approvals and steering, the hand fleet and quotas, in a browser.

Server-rendered pages (Jinja2, autoescaped) over BrainService and the gateway, a little plain JavaScript, server-sent
events for live pages; no build step and nothing fetched from another origin.
"""

from brainhands.console.app import ConsoleConfig, build_app
from brainhands.console.serve import ConsoleServer, start_console

__all__ = ["ConsoleConfig", "ConsoleServer", "build_app", "start_console"]
