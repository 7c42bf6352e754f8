"""One validation mechanism and one error format, for model, training and server configuration.

Every config class is a frozen pydantic dataclass (``config_dataclass``): pydantic checks types,
ranges and unknown keys, and a check that spans fields raises ``invalid(...)`` naming the field.
What pydantic reports becomes one list of entries and one line of text here, whoever asked:

    >>> error_entries(exc)                     # a pydantic.ValidationError
    [{"field": "unet.image_size", "msg": "unet.image_size: Input should be a valid integer (got 8.0)",
      "type": "int_type"}]
    >>> one_line(error_entries(exc))
    'unet.image_size: Input should be a valid integer (got 8.0)'

``error_entries`` knows nothing of HTTP, so the server's 422 handler can call it with the
request's ValidationError (``prefix`` drops or adds leading parts of each location, e.g. the
"body" FastAPI puts first) and answer ``{"detail": entries}``.

Why pydantic *dataclasses* rather than BaseModel: the configs were dataclasses, and callers use
``dataclasses.replace``, ``dataclasses.asdict`` and ``dataclasses.fields`` on them; a pydantic
dataclass is a real dataclass that pydantic validates, so all of that keeps working.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

T = TypeVar("T")

# extra="forbid": a typo in a key is an error, not a silently ignored setting.
# allow_inf_nan=False: no size, rate or weight in a config is meaningfully NaN or infinite.
# validate_default=True: a check that spans fields runs even when its own field is left at the
# default (UNetConfig(image_size=12) must still be checked against the default channel_mult).
# Strictness is per field (StrictInt, StrictFloat, StrictBool, StrictStr), so that 8.0 or "4"
# is refused where an integer is named, while a JSON list is still accepted for a tuple.
CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)

# A value shown in an error is cut to this many characters, so that a huge input (a request
# body, a list of a million numbers) cannot make a huge message.
MAX_SHOWN_INPUT = 60

# The error type of a check written by hand (``invalid``), as it appears in error entries.
INVALID = "value_error"


class ConfigError(ValueError):
    """A configuration value or key that is not allowed; the message names it (dotted key first)."""


def invalid(message: str, field: str | None = None) -> PydanticCustomError:
    """The error a validator raises for a check pydantic cannot express (one that spans fields).

    ``field`` names the key the message is about, relative to the class whose validator raises
    it (a model-level check has no location of its own). ``raise invalid("must divide ...",
    "norm_groups")`` inside UNetConfig reads "unet.norm_groups: must divide ..." at the top.
    """
    return PydanticCustomError(INVALID, "{message}", {"message": message, "field": field or ""})


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def shown(value: Any) -> str:
    """``repr(value)`` cut to MAX_SHOWN_INPUT characters, for an error message."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_INPUT else text[: MAX_SHOWN_INPUT - 3] + "..."


def _fields(cls: Any) -> dict[str, Any] | None:
    """Field name -> type of a dataclass or a pydantic model; None for anything else."""
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name) for f in dataclasses.fields(cls)}
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: info.annotation for name, info in cls.model_fields.items()}
    return None


def allowed_keys(root: Any, loc: Sequence[str | int]) -> list[str] | None:
    """The field names of the class that ``loc`` (minus its last part) leads to from ``root``."""
    fields = _fields(root)
    for part in loc[:-1]:
        fields = _fields(fields.get(str(part))) if fields is not None else None
    return list(fields) if fields is not None else None


def _message(error: Mapping[str, Any], root: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == INVALID and "message" in ctx:
        return str(ctx["message"])
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        keys = allowed_keys(root, error["loc"]) if root is not None else None
        return "unknown key" + (f"; allowed: {', '.join(keys)}" if keys else "")
    if kind in ("missing", "missing_argument"):
        return "required"
    message = str(error["msg"])
    value = error.get("input")
    # A scalar or a short list is shown; a whole section or request body is not.
    if not isinstance(value, Mapping) and not dataclasses.is_dataclass(value):
        message += f" (got {shown(value)})"
    return message


def error_entries(errors: ValidationError | Sequence[Mapping[str, Any]], prefix: Sequence[str | int] = (),
                  root: Any = None, drop: int = 0) -> list[dict[str, Any]]:
    """Each error as {"field": "a.b[2]", "msg": "a.b[2]: what is wrong", "type": pydantic's type}.

    ``errors`` is a pydantic ValidationError or the list its ``errors()`` returns (FastAPI's
    RequestValidationError.errors() gives the same dicts). ``prefix`` is put before every
    location (a section name such as "unet"); ``drop`` removes that many leading parts first
    (FastAPI's "body"); ``root`` (the validated class) lets an unknown key's message list the
    keys allowed there. A body that is not JSON at all ("json_invalid") names no field: its
    location holds a character offset, which goes into the message instead. Independent of any
    web framework.
    """
    listed = errors.errors(include_url=False) if isinstance(errors, ValidationError) else errors
    entries = []
    for error in listed:
        loc = list(error["loc"][drop:])
        if error["type"] == "json_invalid":
            where = [p for p in loc if isinstance(p, int)]
            detail = (error.get("ctx") or {}).get("error", "")
            message = "not valid JSON" + (f" at character {where[0]}" if where else "") + (f": {detail}" if detail
                                                                                           else "")
            entries.append({"field": "", "msg": message, "type": error["type"]})
            continue
        extra = (error.get("ctx") or {}).get("field") if error["type"] == INVALID else None
        field = _path([*prefix, *loc, *str(extra).split(".")] if extra else [*prefix, *loc])
        message = _message({**error, "loc": tuple(loc)}, root)
        entries.append({"field": field, "msg": f"{field}: {message}" if field else message, "type": error["type"]})
    return entries


def one_line(entries: Sequence[Mapping[str, Any]], limit: int = 3) -> str:
    """The messages of ``entries`` joined on one line, the first ``limit`` of them."""
    shown = "; ".join(str(e["msg"]) for e in entries[:limit])
    more = len(entries) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


def config_error(exc: ValidationError, prefix: Sequence[str | int] = (), root: Any = None) -> ConfigError:
    """A ConfigError whose message is ``one_line`` of the errors."""
    return ConfigError(one_line(error_entries(exc, prefix, root)))


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(cls: Any) -> TypeAdapter[Any]:
    """One TypeAdapter per type: building one compiles a validator, so it is kept."""
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def parse(cls: type[T], values: Any, prefix: str = "") -> T:
    """``cls`` from a mapping (nested mappings become nested configs), or a ConfigError naming the key."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: must be a mapping, got {shown(values)}")
    try:
        return typing.cast(T, _adapter(cls).validate_python(dict(values)))
    except ValidationError as exc:
        raise config_error(exc, [prefix] if prefix else [], root=cls) from None


def check_fields(cls: type, values: Any, prefix: str) -> None:
    """Check only the keys and the value of each field given in ``values``, not the checks that
    span fields: for a section whose other values are filled in later (the data decides a
    model's image size, so its attention resolutions cannot be judged yet)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix}: must be a mapping, got {shown(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    for key, value in values.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping):
            check_fields(typing.cast(type, hints[key]), value, f"{prefix}.{key}")
            continue
        try:
            _adapter(hints[key]).validate_python(value)
        except ValidationError as exc:
            raise config_error(exc, [prefix, key]) from None


def raise_config_errors(cls: type[T], section: str = "") -> type[T]:
    """Make ``cls(...)`` raise ConfigError (a ValueError naming the dotted key) instead of
    pydantic's ValidationError; ``section`` is the name the class has inside its parent."""
    init: Callable[..., None] = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise config_error(exc, [section] if section else [], root=cls) from None

    setattr(cls, "__init__", __init__)  # noqa: B010 - mypy refuses assigning to a method
    return cls
