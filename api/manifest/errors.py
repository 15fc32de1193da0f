"""What a user sees when a manifest is wrong: one line per problem, each naming the file,
the document, the field path in wire (camelCase) form, the offending value and what
would be valid.

Pydantic's errors are translated here, at the boundary, into that one shape; nothing
above this module sees a `pydantic.ValidationError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import pydantic
import pydantic_core

from api import messages

#: More errors than this are summarized as "... and N more": past a screenful they stop
#: helping, and a hostile manifest must not make the error itself enormous.
MAX_REPORTED_ERRORS = 50

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\Z")
_SHOW_CHARS = 60

Loc = Sequence[str | int]


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One problem. `path` is relative to its document (`spec.vnodes[3].inputs[0]`);
    `document` is 1-based and None when the file holds a single document."""

    path: str
    message: str
    source: str = ""
    document: int | None = None

    def __str__(self) -> str:
        parts = [self.source]
        if self.document is not None:
            parts.append(f"document {self.document}")
        parts += [self.path, self.message]
        return messages.clip(": ".join(p for p in parts if p))


class ManifestError(ValueError):
    """Every problem found in one or more manifests, reported together."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [str(e) for e in self.errors[:MAX_REPORTED_ERRORS]]
        hidden = len(self.errors) - MAX_REPORTED_ERRORS
        if hidden > 0:
            lines.append(f"... and {hidden} more error{'s' if hidden > 1 else ''}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()


def join(path: str, *parts: str | int) -> str:
    """`join("spec", "vnodes", 3)` is `spec.vnodes[3]`; odd keys are quoted as `["a.b/c"]`."""
    for part in parts:
        if isinstance(part, int):
            path = f"{path}[{part}]"
        elif _PLAIN_KEY.match(part):
            path = f"{path}.{part}" if path else part
        else:
            path = f"{path}[{json.dumps(part)}]"
    return path


def show(value: Any) -> str:
    """A short, readable rendering of an offending value for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict):
        return "a mapping"
    elif isinstance(value, list | tuple):
        return "a list"
    else:
        return f"a value of type {type(value).__name__}"
    if len(text) > _SHOW_CHARS:
        text = text[: _SHOW_CHARS - 3] + "..."
    return text


def from_validation(
    exc: pydantic.ValidationError, model: type[pydantic.BaseModel], *, prefix: str = ""
) -> list[FieldError]:
    return [
        FieldError(join(prefix, *err["loc"]), _message(err, model)) for err in exc.errors()
    ]


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "datetime_type": "an RFC 3339 timestamp such as 2024-01-31T12:00:00Z",
    "datetime_parsing": "an RFC 3339 timestamp such as 2024-01-31T12:00:00Z",
    "datetime_from_date_parsing": "an RFC 3339 timestamp such as 2024-01-31T12:00:00Z",
    "finite_number": "a finite number",
}


def _message(err: pydantic_core.ErrorDetails, model: type[pydantic.BaseModel]) -> str:
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    got = show(err["input"])
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return _unknown_field(err["loc"], model)
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, got {got}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the allowed values')}, got {got}"
    bounds = {
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("greater than", "gt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}, got {got}"
    if kind in ("too_short", "too_long"):
        limit = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        words = "at least" if kind == "too_short" else "at most"
        noun = "item" if limit == 1 else "items"
        actual = ctx.get("actual_length")
        tail = f", got {actual}" if actual is not None else ""
        return f"must have {words} {limit} {noun}{tail}"
    if kind in ("string_too_short", "string_too_long"):
        limit = ctx.get("min_length") if kind == "string_too_short" else ctx.get("max_length")
        words = "at least" if kind == "string_too_short" else "at most"
        return f"must be {words} {limit} characters long, got {got}"
    return f"{err['msg']}, got {got}"


def _unknown_field(loc: Loc, model: type[pydantic.BaseModel]) -> str:
    key = str(loc[-1]) if loc else ""
    known = known_fields(model, loc[:-1])
    if not known:
        return f"unknown field {json.dumps(key)}"
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {json.dumps(close[0])}?" if close else ""
    return f"unknown field {json.dumps(key)}{hint} (known: {', '.join(known)})"


def known_fields(model: type[pydantic.BaseModel], loc: Loc) -> list[str]:
    """Wire names of the fields of the model found at `loc` below `model`, if any."""
    tp: Any = model
    for part in loc:
        tp = _strip_none(tp)
        if isinstance(part, int):
            if typing.get_origin(tp) is not list:
                return []
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
            fields = {f.alias or n: f for n, f in tp.model_fields.items()}
            if part not in fields:
                return []
            tp = fields[part].annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
    tp = _strip_none(tp)
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _strip_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp
