"""load_hands(): find the hands a module or a file defines, for `brainhands serve hand MODULE[:FACTORY]`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from hands._hand import Hand


class HandLoadError(Exception):
    """The hands named by a spec cannot be loaded: the message is one line a person can act on."""


def _is_file_spec(module_part: str) -> bool:
    return module_part.endswith(".py") or os.sep in module_part or "/" in module_part


def _import_file(path_text: str) -> ModuleType:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise HandLoadError(f"cannot load hand file {path_text!r}: no such file")
    path = path.resolve()
    # Like `python FILE`: the file's directory comes first on the path, so its sibling modules import.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = path.stem if path.suffix == ".py" else path.name
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HandLoadError(f"cannot load hand file {path_text!r}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look the module up by name while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import(module_part: str) -> ModuleType:
    if _is_file_spec(module_part):
        return _import_file(module_part)
    # Like `python -m` and uvicorn: a module next to where the command runs is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(module_part)


def load_hands(spec: str) -> list[Hand]:
    """Resolve MODULE[:ATTR] or FILE.py[:ATTR] to hands; a spec that names none raises HandLoadError.

    ATTR may name a Hand, a list of hands, or a factory that returns either. Without
    ATTR the module's HANDS (list or factory) is used, else every Hand at module level.
    A factory's own errors (a bad environment value: ValueError) pass through unchanged.
    """
    return list(load_hand_module(spec)[1])


def load_hand_module(spec: str) -> tuple[ModuleType, list[Hand]]:
    """load_hands(), also returning the module (whose DEFAULT_PORT, if any, serve_hand uses)."""
    module_part, _, attr = spec.partition(":")
    if not module_part:
        raise HandLoadError(f"{spec!r}: expected MODULE[:ATTR] or FILE.py[:ATTR]")
    try:
        module = _import(module_part)
    except ImportError as exc:
        raise HandLoadError(f"cannot import hand module {module_part!r}: {exc}") from None
    except SyntaxError as exc:
        where = f"{exc.filename or module_part}:{exc.lineno}" if exc.lineno else (exc.filename or module_part)
        raise HandLoadError(f"syntax error in hand module {where}: {exc.msg}") from None
    if attr:
        if not hasattr(module, attr):
            raise HandLoadError(f"module {module_part!r} has no attribute {attr!r}")
        found = getattr(module, attr)
    elif hasattr(module, "HANDS"):
        found = module.HANDS
    else:
        found = [v for v in vars(module).values() if isinstance(v, Hand)]
        if not found:
            raise HandLoadError(f"module {module_part!r} defines no hands (decorate async functions with @hand)")
    if callable(found) and not isinstance(found, Hand):
        found = found()
    if isinstance(found, Hand):
        found = [found]
    try:
        found = list(found)
    except TypeError:
        raise HandLoadError(f"{spec}: {found!r} is not a hand or a list of hands") from None
    bad = [h for h in found if not isinstance(h, Hand)]
    if bad:
        raise HandLoadError(f"{spec}: {bad[0]!r} is not a hand (decorate it with @hand)")
    return module, found
