"""The hand SDK: write a hand as a typed async function, serve it over gRPC, call it."""

from hands._client import HandClient
from hands._hand import NAME_RE, Context, Hand, HandError, HandResult, Usage, hand
from hands._load import HandLoadError, load_hands
from hands._serve import serve, serve_async
from hands._server import HandServiceConfig, HandServicer, start

__all__ = [
    "NAME_RE",
    "Context",
    "Hand",
    "HandClient",
    "HandError",
    "HandLoadError",
    "HandResult",
    "HandServiceConfig",
    "HandServicer",
    "Usage",
    "hand",
    "load_hands",
    "serve",
    "serve_async",
    "start",
]
