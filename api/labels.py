"""Kubernetes label selectors: `app=mlp,tier!=gpu,zone in (a,b),!draining`.

Used by `dcnctl get -l`, by list filters in the API, and by placement constraints, so the
grammar and matching rules are Kubernetes' own: a user's habits from `kubectl -l` carry
over unchanged. Pure: no I/O.

Matching follows Kubernetes, including its two less obvious rules: `key!=value` and
`key notin (...)` also match objects that lack the key, and the empty selector matches
everything.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping

from api.resources import meta

#: A selector longer than this is a mistake or an attack, not a query.
MAX_SELECTOR_CHARS = 4096

_KEY = r"[^\s!=(),]+"
_VALUE = r"[^\s!=(),]*"
_EXISTS = re.compile(rf"^(?P<key>{_KEY})\Z")
_NOT_EXISTS = re.compile(rf"^!\s*(?P<key>{_KEY})\Z")
_EQUALITY = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})\Z")
_SET = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\Z")

_FORMS = "key, !key, key=value, key==value, key!=value, key in (v1,v2) or key notin (v1,v2)"


class SelectorError(ValueError):
    """A selector that does not parse; the message names the offending term."""


class Operator(enum.Enum):
    EXISTS = "exists"
    NOT_EXISTS = "!"
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case Operator.EXISTS:
                return present
            case Operator.NOT_EXISTS:
                return not present
            case Operator.EQUALS | Operator.IN:
                return present and labels[self.key] in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                return not present or labels[self.key] not in self.values

    def __str__(self) -> str:
        match self.operator:
            case Operator.EXISTS:
                return self.key
            case Operator.NOT_EXISTS:
                return f"!{self.key}"
            case Operator.EQUALS | Operator.NOT_EQUALS:
                (value,) = self.values
                return f"{self.key}{self.operator.value}{value}"
            case Operator.IN | Operator.NOT_IN:
                return f"{self.key} {self.operator.value} ({','.join(sorted(self.values))})"


@dataclasses.dataclass(frozen=True)
class Selector:
    """All requirements must hold (the comma is AND; there is no OR, as in Kubernetes)."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def parse_selector(text: str) -> Selector:
    """The selector for `text`; blank text is the selector that matches everything."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise SelectorError(
            f"label selector is {len(text)} characters long, more than {MAX_SELECTOR_CHARS}"
        )
    if not text.strip():
        return Selector()
    return Selector(tuple(_requirement(term) for term in _split_terms(text)))


def _split_terms(text: str) -> list[str]:
    """Commas separate terms except inside a `(...)` value set."""
    terms: list[str] = []
    start = 0
    depth = 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
            if depth > 1:
                raise SelectorError(f"invalid label selector {text!r}: nested '(' at column {i}")
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(
                    f"invalid label selector {text!r}: ')' without '(' at column {i}"
                )
        elif char == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    if depth:
        raise SelectorError(f"invalid label selector {text!r}: '(' is never closed")
    terms.append(text[start:])
    return terms


def _requirement(raw: str) -> Requirement:
    term = raw.strip()
    if not term:
        raise SelectorError("invalid label selector: empty term (two commas in a row?)")
    if m := _NOT_EXISTS.match(term):
        return Requirement(_key(m["key"], term), Operator.NOT_EXISTS)
    if m := _EXISTS.match(term):
        return Requirement(_key(m["key"], term), Operator.EXISTS)
    if m := _EQUALITY.match(term):
        key = _key(m["key"], term)
        op = Operator.NOT_EQUALS if m["op"] == "!=" else Operator.EQUALS
        return Requirement(key, op, frozenset({_value(key, m["value"], term)}))
    if m := _SET.match(term):
        key = _key(m["key"], term)
        values = [v.strip() for v in m["values"].split(",")]
        if values == [""]:
            raise SelectorError(
                f"invalid label selector term {term!r}: {m['op']} needs at least one value"
            )
        op = Operator.IN if m["op"] == "in" else Operator.NOT_IN
        return Requirement(key, op, frozenset(_value(key, v, term) for v in values))
    raise SelectorError(f"invalid label selector term {term!r}: expected {_FORMS}")


def _key(key: str, term: str) -> str:
    try:
        meta.check_labels({key: ""})
    except ValueError as exc:
        raise SelectorError(f"invalid label selector term {term!r}: {exc}") from None
    return key


def _value(key: str, value: str, term: str) -> str:
    try:
        meta.check_labels({key: value})
    except ValueError as exc:
        raise SelectorError(f"invalid label selector term {term!r}: {exc}") from None
    return value
