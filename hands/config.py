"""Config as frozen pydantic models: one error line naming the key, shared value types, one environment loader."""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

#: The Claude model the brain, the worker LLM and the agent hand use unless told otherwise.
DEFAULT_MODEL = "claude-sonnet-5-5"


class ConfigError(ValueError):
    """A bad config value, as one line naming the key: ``tenants[1].api_keys[0]: environment variable ... is not set``.

    ``key`` is the dotted path of the bad value ("" for the whole document) and ``reason`` what is wrong with it,
    so a caller can say where the config came from (``limits.max_turns: ...``).
    """

    def __init__(self, message: str, *, key: str = "", reason: str | None = None):
        super().__init__(message)
        self.key = key
        self.reason = message if reason is None else reason


def key_path(loc: Sequence[str | int]) -> str:
    """``("tenants", 1, "api_keys", 0)`` -> ``tenants[1].api_keys[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def invalid(loc: str | Sequence[str | int], reason: str, value: Any = None) -> ValidationError:
    """An error to raise from a validator for a key below the one being validated (``invalid("max", "...")``).

    pydantic adds the validated value's own place in front of ``loc``, so cross-field checks name the key they mean.
    """
    loc = (loc,) if isinstance(loc, str) else tuple(loc)
    return ValidationError.from_exception_data(
        "config", [InitErrorDetails(type=PydanticCustomError("config", reason), loc=loc, input=value)]
    )


def _reason(error: Mapping[str, Any]) -> str:
    kind, value = error["type"], error.get("input")
    if kind in ("value_error", "assertion_error") and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping, got {value!r}"
    if kind == "string_type":
        return f"must be a string, got {value!r}"
    message = error["msg"]
    if kind == "config":  # raised with invalid(): the reason as written
        return message
    return f"{message[:1].lower()}{message[1:]}, got {value!r}"


def config_error(
    exc: ValidationError, *, where: str = "", prefix: str = "", error: type[ConfigError] = ConfigError
) -> ConfigError:
    """The first of pydantic's errors as one line, ``[where: ]key: reason``; prefix is the document's own key."""
    first = exc.errors(include_url=False)[0]
    key, reason = key_path(((prefix,) if prefix else ()) + tuple(first["loc"])), _reason(first)
    line = f"{key}: {reason}" if key else reason
    return error(f"{where}: {line}" if where else line, key=key, reason=reason)


# --- value types ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def seconds(value: Any) -> float:
    """Seconds from a number or a string like '500ms', '2s', '1m', '1h' (a bare number is seconds); more than zero."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 2s or 500ms, got {value!r}")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        result = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"must be a duration like 2s or 500ms, got {value!r}")
    if not result > 0:
        raise ValueError(f"must be more than zero, got {value!r}")
    return result


#: A positive time in seconds, written as a number or with a unit: 500ms, 2s, 1m, 1h.
Duration = Annotated[float, BeforeValidator(seconds)]


def whole(minimum: int = 1) -> Any:
    """The type of a whole number >= minimum (an int, or its digits as from an environment variable)."""

    def check(value: Any) -> int:
        number = value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            number = int(value)
        if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
            raise ValueError(f"must be an integer >= {minimum}, got {value!r}")
        return number

    return Annotated[int, BeforeValidator(check)]


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


#: true or false, nothing that merely looks like one ("yes", 1).
Flag = Annotated[bool, BeforeValidator(_flag)]


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


#: A string with something in it.
Text = Annotated[str, BeforeValidator(_text)]


def read_pem(value: Any, info: ValidationInfo) -> bytes:
    """The PEM bytes of the file a key names, read once at start (a relative path is taken from the context's base_dir)."""
    if isinstance(value, bytes):
        if b"-----BEGIN" not in value:
            raise ValueError("is not PEM data")
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("must be the path of a PEM file")
    path = pathlib.Path(value)
    base_dir = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base_dir is not None:
        path = pathlib.Path(base_dir) / path
    return pem_file(path)


def pem_file(path: str | os.PathLike) -> bytes:
    """The bytes of a PEM file, or ValueError saying it cannot be read or is not PEM."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"{path} is not a PEM file")
    return data


#: A PEM file: the path in the config, its bytes in the model (``Pem | None`` for an optional one).
Pem = Annotated[bytes, BeforeValidator(read_pem)]


def string_list(message: str) -> Any:
    """The type of a non-empty list of non-empty strings, a lone string being a list of one; message if not."""

    def check(value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not items or not all(isinstance(v, str) and v for v in items):
            raise ValueError(message)
        return tuple(items)

    return Annotated[tuple[str, ...], BeforeValidator(check)]


# --- the base model --------------------------------------------------------------------------------


class ConfigModel(BaseModel):
    """A frozen config model: unknown keys are refused, each error is one line naming the key.

    Build one with keywords (``BrainConfig(max_turns=5)``), from a parsed file (``parse(raw)``) or from the
    environment (``from_env()``, reading the variables ``env_vars`` and ``env_prefix`` name). Every way raises
    ``error`` (a ConfigError, so a ValueError) with the first bad key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: words in front of each error line ("brain config"); none by default.
    config_name: ClassVar[str] = ""
    #: the error raised for a bad value.
    error: ClassVar[type[ConfigError]] = ConfigError
    #: field -> environment variable (or variables, the first one set wins) that from_env reads.
    env_vars: ClassVar[Mapping[str, str | tuple[str, ...]]] = {}
    #: from_env also reads PREFIX + FIELD in capitals for every field not in env_vars.
    env_prefix: ClassVar[str] = ""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc, where=self.config_name, error=self.error) from None

    # Tell pydantic this __init__ only reports errors differently: a nested model is then validated in place
    # (its errors keep their full path, tenants[1].api_keys[0]) instead of through a call to __init__.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """A mapping with only known keys and every required one: said in our words, with the keys expected."""
        if isinstance(data, BaseModel):
            return data
        expected = ", ".join(sorted(cls.model_fields))
        if not isinstance(data, Mapping):
            raise ValueError(f"must be a mapping with {expected}, got {data!r}")
        for key in data:
            if key not in cls.model_fields:
                raise invalid(str(key), f"unknown key (expected {expected})", data[key])
        for name, field in cls.model_fields.items():
            if field.is_required() and name not in data:
                raise invalid(name, f"missing; {field.description}" if field.description else "missing")
        return data

    @classmethod
    def parse(cls, raw: Any, *, context: Mapping[str, Any] | None = None, prefix: str = "") -> Self:
        """Validate a parsed document (YAML, JSON; None is an empty one); prefix is its key in a bigger one."""
        try:
            return cls.model_validate({} if raw is None else raw, context=dict(context or {}))
        except ValidationError as exc:
            raise config_error(exc, where=cls.config_name, prefix=prefix, error=cls.error) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed, validated like a new one (dataclasses.replace for a config)."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """The config from environment variables (an empty one counts as unset), then the overrides that are not None.

        A bad variable is named as such: ``BRAINHANDS_MAX_DEPTH: must be an integer >= 0, got 'deep'``.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        source: dict[str, str] = {}
        for name in cls.model_fields:
            names = cls.env_vars.get(name) or ((cls.env_prefix + name.upper(),) if cls.env_prefix else ())
            for var in (names,) if isinstance(names, str) else names:
                raw = env.get(var, "").strip()
                if raw:
                    values[name], source[name] = raw, var
                    break
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
                source.pop(name, None)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            var = source.get(str(first["loc"][0])) if first["loc"] else None
            if var is None:
                raise config_error(exc, where=cls.config_name, error=cls.error) from None
            reason = _reason(first)
            raise cls.error(f"{var}: {reason}", key=var, reason=reason) from None
