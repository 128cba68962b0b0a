"""The @hand decorator: a typed async function becomes a named, schema-checked hand."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class HandError(Exception):
    """Raised inside a hand for a failure the model should see: the call returns is_error=true."""


@dataclass(frozen=True)
class Usage:
    """LLM tokens a hand spent on one call."""

    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0  # calls this hand made to other hands for the caller (a worker that orchestrates)
    # tokens those calls spent (already reported with them, so quotas charged them there): budgets count them
    nested_tokens: int = 0


@dataclass(frozen=True)
class HandResult:
    """What a hand may return instead of a plain string, to report an error or its token usage."""

    output: str
    is_error: bool = False
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class Context:
    """What a hand may know about the call it serves (take it as a keyword argument named ctx)."""

    call_id: str
    session_id: str
    deadline: float | None  # loop.time() by which the call must finish, None for no deadline
    metadata: Mapping[str, str]
    logger: Any
    depth: int = 0

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())


@dataclass(frozen=True, eq=False)
class Hand:
    """A named capability: description and input schema for the model, and the function that does it."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    fn: Callable[..., Awaitable[Any]]
    idempotent: bool = False
    timeout: float | None = None
    takes_ctx: bool = False
    _validator: Any = field(default=None, repr=False)

    @property
    def input_schema_json(self) -> str:
        return json.dumps(self.input_schema, separators=(",", ":"), sort_keys=True)

    def parse_input(self, raw: str) -> dict[str, Any]:
        """The input as keyword arguments, or HandError with a message the model can act on."""
        if raw.strip() == "":
            args: Any = {}
        else:
            try:
                args = json.loads(raw)
            except ValueError as exc:
                raise HandError(f"input is not valid JSON ({exc}); send a JSON object matching the schema") from None
            except RecursionError:  # a few KB of [[[[... would otherwise escape as an internal error
                raise HandError("input is nested too deeply to parse; send a flatter JSON object") from None
        if not isinstance(args, dict):
            raise HandError(f"input must be a JSON object, got {type(args).__name__}")
        try:
            errors = sorted(self._validator.iter_errors(args), key=lambda e: list(e.absolute_path))
        except RecursionError:
            raise HandError("input is nested too deeply to validate; send a flatter JSON object") from None
        if errors:
            err = errors[0]
            where = "/".join(str(p) for p in err.absolute_path) or "input"
            raise HandError(f"invalid input for {self.name}: {where}: {err.message}")
        return args

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly, as plain Python (no validation)."""
        return await self.fn(*args, **kwargs)


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_for(tp: Any, where: str) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        schema = _schema_for(args[0], where)
        for meta in args[1:]:
            if isinstance(meta, str):
                schema["description"] = meta
        return schema
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    if tp is Any:
        return {}
    if tp is type(None):
        return {"type": "null"}
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        item = args[0] if args else Any
        return {"type": "array", "items": _schema_for(item, where)}
    if origin is dict or tp is dict:
        if args and args[0] is not str:
            raise TypeError(f"{where}: dict keys must be str to fit JSON")
        return {"type": "object", "additionalProperties": _schema_for(args[1], where) if args else {}}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_for(a, where) for a in args]}
    raise TypeError(f"{where}: type {tp!r} has no JSON schema; use str, int, float, bool, list, dict, Literal or pass input_schema=")


def _schema_from_signature(fn: Callable, sig: inspect.Signature) -> dict[str, Any]:
    hints = typing.get_type_hints(fn, include_extras=True)
    props: dict[str, Any] = {}
    required: list[str] = []
    for pname, param in sig.parameters.items():
        if pname == "ctx":
            continue
        if pname not in hints:
            raise TypeError(f"hand {fn.__name__}: parameter {pname!r} needs a type hint (or pass input_schema=)")
        prop = _schema_for(hints[pname], f"hand {fn.__name__}, parameter {pname!r}")
        if param.default is inspect.Parameter.empty:
            required.append(pname)
        else:
            try:
                json.dumps(param.default)
                prop.setdefault("default", param.default)
            except TypeError:
                pass
        props[pname] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def hand(
    fn: Callable[..., Awaitable[Any]] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    input_schema: Mapping[str, Any] | None = None,
    idempotent: bool = False,
    timeout: float | None = None,
):
    """Turn an async function into a Hand.

    The name defaults to the function's, the description to its docstring, the input
    schema to one derived from its type hints. The signature is checked here, so a
    mistake fails at import, not on the first call.
    """

    def decorate(f: Callable[..., Awaitable[Any]]) -> Hand:
        hand_name = name or f.__name__
        if not NAME_RE.fullmatch(hand_name):  # not match: its $ also matches before a trailing newline
            raise ValueError(f"hand name {hand_name!r} must match {NAME_RE.pattern}")
        if not inspect.iscoroutinefunction(f):
            raise TypeError(f"hand {hand_name}: must be an async def function")
        desc = description or inspect.getdoc(f)
        if not desc:
            raise ValueError(f"hand {hand_name}: needs a description (docstring or description=) for the model")
        sig = inspect.signature(f)
        for pname, param in sig.parameters.items():
            if param.kind in (inspect.Parameter.POSITIONAL_ONLY,):
                raise TypeError(f"hand {hand_name}: parameter {pname!r} is positional-only; inputs arrive by name")
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"hand {hand_name}: *{pname} cannot receive a JSON object's fields")
        takes_ctx = "ctx" in sig.parameters
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        if input_schema is None:
            if has_var_kw:
                raise TypeError(f"hand {hand_name}: **kwargs needs an explicit input_schema=")
            schema = _schema_from_signature(f, sig)
        else:
            schema = dict(input_schema)
            if schema.get("type") != "object":
                raise ValueError(f"hand {hand_name}: input_schema must describe an object (type: object)")
            if not has_var_kw:
                params = set(sig.parameters) - {"ctx"}
                unknown = set(schema.get("properties", {})) - params
                if unknown:
                    raise TypeError(f"hand {hand_name}: schema properties {sorted(unknown)} are not parameters")
                missing = [
                    p for p, v in sig.parameters.items()
                    if p != "ctx" and v.default is inspect.Parameter.empty and p not in schema.get("required", [])
                ]
                if missing:
                    raise TypeError(f"hand {hand_name}: parameters {missing} have no default but are not required by the schema")
        validator_cls = jsonschema.validators.validator_for(schema)
        try:
            validator_cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"hand {hand_name}: input schema is not valid JSON Schema: {exc.message}") from None
        return Hand(
            name=hand_name,
            description=desc,
            input_schema=schema,
            fn=f,
            idempotent=idempotent,
            timeout=timeout,
            takes_ctx=takes_ctx,
            _validator=validator_cls(schema),
        )

    if fn is not None:
        return decorate(fn)
    return decorate


def check_unique(hands: list[Hand]) -> dict[str, Hand]:
    """Index hands by name; a duplicate name is a start-up error."""
    table: dict[str, Hand] = {}
    for h in hands:
        if not isinstance(h, Hand):
            raise TypeError(f"{h!r} is not a hand: decorate it with @hand")
        if h.name in table:
            raise ValueError(f"two hands are named {h.name!r}; hand names must be unique in a service")
        table[h.name] = h
    return table

