"""Bytes to plain JSON-shaped documents, safely.

Everything a hostile or careless file could do to the process is stopped here, before
any model sees the data:

- size: the whole input is refused above `max_bytes`, before it is decoded or parsed;
- nesting and aliases: a first pass over the YAML *event* stream (iterative, in libyaml
  when available) refuses nesting deeper than MAX_DEPTH, aliases that refer to a node
  containing them (recursive structures) and alias expansion past MAX_NODES nodes or
  MAX_EXPANDED_CHARS characters of text (the "billion laughs" bomb, and its cousin that
  aliases one long string), before a single object is constructed;
- YAML is constructed only by a subclass of the *safe* loader (so `yaml.load_all` below is
  `safe_load_all` plus checks): arbitrary tags are refused, as are duplicate keys and keys
  that are not strings (`on:` reads as the boolean true in YAML 1.1);
- values are normalized to JSON types: timestamps become RFC 3339 strings, while binary
  data, NaN and infinities, integers beyond 64 bits and unpaired surrogates are errors.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import sys
from typing import Any

import yaml
import yaml.constructor
import yaml.events
import yaml.nodes
import yaml.reader

from api.manifest import errors

MAX_DOCUMENT_BYTES = 1 << 20
MAX_DEPTH = 64
#: Nodes per document after alias expansion: about what a file of MAX_DOCUMENT_BYTES could
#: hold without aliases, so aliases never buy an attacker more than plain text would.
MAX_NODES = 1 << 19
#: Characters of scalar text per document after alias expansion. Counting nodes alone let a
#: 531 KB file alias one long string half a million times and grow to gigabytes once built;
#: four times what a document may hold without aliases leaves honest anchors plenty.
MAX_EXPANDED_CHARS = 4 * MAX_DOCUMENT_BYTES
#: And relative to the text itself: aliases may make a document at most ALIAS_GROWTH times
#: the characters of text, and nodes, that text of its length could hold without aliases
#: (a node takes at least two characters: `1,`), counted from ALIAS_FLOOR characters up so
#: small files keep their anchors. Without it a 2.7 KB manifest of nested aliases in params
#: was accepted at 32,768 numbers, and 6 MB in memory; with it, no accepted input takes more
#: than MEMORY_PER_BYTE times its size (or ALIAS_FLOOR) in memory while it is read.
ALIAS_GROWTH = 4
ALIAS_FLOOR = 4096
#: Documented (README, Manifests), and checked by tests/api/test_manifest_fuzz.py.
MEMORY_PER_BYTE = 1024

_INT64 = 2**63
_MERGE_TAG = "tag:yaml.org,2002:merge"
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')

_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclasses.dataclass
class Document:
    number: int  # 1-based position in the file
    body: Any  # JSON-shaped: dict, list, str, int, float, bool or None
    errors: list[errors.FieldError]


class _Refused(Exception):
    """Raised inside the reader to abandon a stream with one message."""


def read(data: bytes | str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> list[Document]:
    """The non-empty documents of a YAML stream or JSON text.

    Raises ManifestError (without source; the caller adds it) when the text as a whole
    cannot be read; per-document problems are returned in `Document.errors`.
    """
    try:
        text = _decode(data, max_bytes)
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            try:
                return _read_json(text)
            except _Refused as json_error:
                # Flow-style YAML starts with '{' too; if that fails as well, the JSON
                # error is the one that explains the file.
                try:
                    return _read_yaml(text)
                except _Refused:
                    raise json_error from None
        return _read_yaml(text)
    except _Refused as exc:
        raise errors.ManifestError([errors.FieldError("", str(exc))]) from None


def _decode(data: bytes | str, max_bytes: int) -> str:
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _Refused(
                f"text is not valid Unicode: unpaired surrogate at offset {exc.start}"
            ) from None
    else:
        raw = bytes(data)
    if len(raw) > max_bytes:
        raise _Refused(f"input is {len(raw)} bytes, more than the limit of {max_bytes} bytes")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        raise _Refused(
            f"input is not UTF-8 text: byte 0x{byte:02x} at offset {exc.start}"
        ) from None


# JSON ------------------------------------------------------------------------------------


class _JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers keys it saw twice, for a path-naming error."""

    duplicates: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _json_constant(name: str) -> None:
    raise _Refused(f"invalid JSON: {name} is not a number JSON allows")


def read_json(data: bytes | str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """The value of one JSON text, with the size and nesting limits of `read` checked before
    anything recurses (a 100,000-deep array would otherwise exhaust Python's stack in
    `json.loads`): for JSON received over the wire (gRPC Apply).

    Raises ManifestError (one problem, without path or source) when it cannot be read.
    """
    try:
        return _json_value(_decode(data, max_bytes))
    except _Refused as exc:
        raise errors.ManifestError([errors.FieldError("", str(exc))]) from None


def _read_json(text: str) -> list[Document]:
    return [normalize(_json_value(text))]


def _json_value(text: str) -> Any:
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(f"invalid JSON: nested more than {MAX_DEPTH} levels deep")
        elif char in "]}":
            depth -= 1
    try:
        value = json.loads(text, object_pairs_hook=_json_object, parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        raise _Refused(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise _Refused(f"invalid JSON: {_conversion(exc)}") from None
    return value


# YAML ------------------------------------------------------------------------------------


class _StrictLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    def construct_mapping(
        self, node: yaml.nodes.MappingNode, deep: bool = False
    ) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.nodes.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be strings, not lists or mappings",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key_node.value!r} is read as {errors.show(key)}, not a string; "
                    f"quote it: \"{key_node.value}\"",
                    key_node.start_mark,
                )
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first at line {first_line[key]})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        result: dict[Any, Any] = super().construct_mapping(node, deep)
        return result


def _read_yaml(text: str) -> list[Document]:
    try:
        _scan(text)
        loaded = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as exc:
        raise _Refused(f"invalid YAML{_where(exc.problem_mark)}: {_yaml_problem(exc)}") from None
    except yaml.reader.ReaderError as exc:
        char = exc.character
        code = ord(char) if isinstance(char, str) else int(char)
        raise _Refused(
            f"invalid YAML: character U+{code:04X} at offset {exc.position} is not allowed "
            "(control characters other than tab and newline cannot appear in YAML)"
        ) from None
    except yaml.YAMLError as exc:
        raise _Refused(f"invalid YAML: {_one_line(exc)}") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # Scalars the safe constructor cannot convert (an integer of 5000 digits).
        raise _Refused(f"invalid YAML: {_conversion(exc)}") from None
    return [normalize(body, n) for n, body in enumerate(loaded, 1) if body is not None]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _conversion(exc: BaseException) -> str:
    if "integer string conversion" in str(exc):
        return f"an integer has more than {sys.get_int_max_str_digits()} digits"
    return _one_line(exc)


def _where(mark: Any) -> str:
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "syntax error"
    if exc.context:
        return f"{exc.context}: {problem}"
    return problem


def _scan(text: str) -> None:
    """Refuse deep nesting, recursive aliases and alias bombs, from events alone."""
    room = ALIAS_GROWTH * max(len(text), ALIAS_FLOOR)
    max_nodes, max_chars = min(MAX_NODES, room // 2), min(MAX_EXPANDED_CHARS, room)
    #: [anchor, expanded nodes, expanded characters] per open collection
    stack: list[list[Any]] = []
    sizes: dict[str, tuple[int, int]] = {}  # (nodes, characters) per finished anchored node
    document = 0

    def finish(anchor: str | None, nodes: int, chars: int, mark: Any) -> None:
        if anchor is not None:
            sizes[anchor] = (nodes, chars)
        if stack:
            stack[-1][1] += nodes
            stack[-1][2] += chars
            if stack[-1][1] > max_nodes:
                raise _Refused(
                    f"invalid YAML{_where(mark)}: document {document} expands to more than "
                    f"{max_nodes} nodes (aliases expanding too far? at most {ALIAS_GROWTH} "
                    "times what the text holds)"
                )
            if stack[-1][2] > max_chars:
                raise _Refused(
                    f"invalid YAML{_where(mark)}: document {document} expands to more than "
                    f"{max_chars} characters of text (aliases expanding too far? at most "
                    f"{ALIAS_GROWTH} times what the text holds)"
                )

    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, yaml.events.DocumentStartEvent):
            document += 1
            sizes.clear()
        elif isinstance(event, yaml.events.ScalarEvent):
            finish(event.anchor, 1, len(event.value), event.start_mark)
        elif isinstance(event, yaml.events.AliasEvent):
            if any(entry[0] == event.anchor for entry in stack):
                raise _Refused(
                    f"invalid YAML{_where(event.start_mark)}: alias *{event.anchor} refers "
                    "to a node that contains it (recursive structures are not allowed)"
                )
            finish(None, *sizes.get(event.anchor or "", (1, 0)), event.start_mark)
        elif isinstance(event, yaml.events.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise _Refused(
                    f"invalid YAML{_where(event.start_mark)}: nested more than {MAX_DEPTH} "
                    "levels deep"
                )
            stack.append([event.anchor, 1, 0])
        elif isinstance(event, yaml.events.CollectionEndEvent):
            anchor, nodes, chars = stack.pop()
            finish(anchor, nodes, chars, event.start_mark)


# Normalization ---------------------------------------------------------------------------


def normalize(body: Any, number: int = 1) -> Document:
    """`body` as JSON types, with a problem for each value JSON cannot carry."""
    problems: list[errors.FieldError] = []
    return Document(number, _normalize(body, "", 0, problems), problems)


def _normalize(value: Any, path: str, depth: int, problems: list[errors.FieldError]) -> Any:
    """`value` as JSON types; problems are appended, and the bad value becomes None."""
    if depth > MAX_DEPTH:
        problems.append(errors.FieldError(path, f"nested more than {MAX_DEPTH} levels deep"))
        return None
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(errors.FieldError(path, "string has an unpaired surrogate"))
                return None
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            problems.append(
                errors.FieldError(path, f"integer {errors.show(value)} does not fit in 64 bits")
            )
            return None
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(errors.FieldError(path, f"number {value} is not finite"))
            return None
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in getattr(value, "duplicates", ()):
            problems.append(errors.FieldError(errors.join(path, key), "duplicate key"))
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(
                    errors.FieldError(path, f"key {errors.show(key)} must be a string")
                )
                continue
            out[key] = _normalize(item, errors.join(path, key), depth + 1, problems)
        return out
    if isinstance(value, list | tuple):
        return [
            _normalize(item, errors.join(path, i), depth + 1, problems)
            for i, item in enumerate(value)
        ]
    if isinstance(value, datetime.datetime | datetime.date):
        text = value.isoformat()
        return text.replace("+00:00", "Z") if text.endswith("+00:00") else text
    if isinstance(value, bytes):
        problems.append(errors.FieldError(path, "binary data (!!binary) is not supported"))
        return None
    problems.append(errors.FieldError(path, f"unsupported value {errors.show(value)}"))
    return None
