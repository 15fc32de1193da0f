"""Label selectors: Kubernetes syntax, Kubernetes matching, errors naming the bad term."""

from __future__ import annotations

import pytest

from api import labels

LABELS = {"app": "mlp", "tier": "gpu", "zone": "eu-1", "example.com/owner": "ana", "empty": ""}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        pytest.param("", True, id="empty-matches-all"),
        pytest.param("   ", True, id="blank-matches-all"),
        pytest.param("app=mlp", True, id="equals"),
        pytest.param("app==mlp", True, id="double-equals"),
        pytest.param("app=cnn", False, id="equals-other"),
        pytest.param("missing=x", False, id="equals-missing"),
        pytest.param("app!=cnn", True, id="not-equals"),
        pytest.param("app!=mlp", False, id="not-equals-same"),
        pytest.param("missing!=x", True, id="not-equals-missing-matches"),
        pytest.param("zone in (eu-1,us-2)", True, id="in"),
        pytest.param("zone in (us-2)", False, id="in-other"),
        pytest.param("missing in (x)", False, id="in-missing"),
        pytest.param("zone notin (us-2, ap-3)", True, id="notin"),
        pytest.param("zone notin (eu-1)", False, id="notin-member"),
        pytest.param("missing notin (x)", True, id="notin-missing-matches"),
        pytest.param("tier", True, id="exists"),
        pytest.param("missing", False, id="exists-missing"),
        pytest.param("!missing", True, id="not-exists"),
        pytest.param("! tier", False, id="not-exists-present"),
        pytest.param("empty=", True, id="equals-empty-value"),
        pytest.param("example.com/owner=ana", True, id="prefixed-key"),
        pytest.param("app=mlp,tier=gpu,zone in (eu-1),!draining", True, id="and-all"),
        pytest.param("app=mlp,tier=cpu", False, id="and-one-fails"),
        pytest.param(" app = mlp , zone in ( eu-1 , us-2 ) ", True, id="spaces"),
        pytest.param("zone in (eu-1,us-2),app=mlp", True, id="comma-inside-set"),
    ],
)
def test_selectors_match_like_kubernetes(selector: str, matches: bool) -> None:
    assert labels.parse_selector(selector).matches(LABELS) is matches


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        pytest.param("app=mlp,,tier", "empty term", id="empty-term"),
        pytest.param("app=mlp,", "empty term", id="trailing-comma"),
        pytest.param(
            "app ~ mlp",
            "invalid label selector term 'app ~ mlp': expected key, !key",
            id="unknown-operator",
        ),
        pytest.param("app=a=b", "invalid label selector term 'app=a=b'", id="two-equals"),
        pytest.param("zone in (a", "'(' is never closed", id="unclosed"),
        pytest.param("zone in a)", "')' without '('", id="unopened"),
        pytest.param("zone in ((a))", "nested '('", id="nested"),
        pytest.param("zone in ()", "in needs at least one value", id="empty-set"),
        pytest.param("zone notin ( )", "notin needs at least one value", id="blank-set"),
        pytest.param("zone in", "invalid label selector term 'zone in'", id="in-without-set"),
        pytest.param("-app=x", "invalid label key '-app'", id="bad-key"),
        pytest.param("Bad_Domain/app=x", "invalid name 'Bad_Domain'", id="bad-prefix"),
        pytest.param("app=-x", "invalid label value '-x' for key 'app'", id="bad-value"),
        pytest.param("zone in (ok, -bad)", "invalid label value '-bad'", id="bad-set-value"),
        pytest.param("a" * 64 + "=x", "at most 63 characters", id="long-key"),
        pytest.param("app=" + "x" * 64, "invalid label value", id="long-value"),
        pytest.param("app=x," * 1000, "more than 4096", id="too-long"),
    ],
)
def test_bad_selectors_name_the_term(selector: str, fragment: str) -> None:
    with pytest.raises(labels.SelectorError) as info:
        labels.parse_selector(selector)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("selector", "canonical"),
    [
        ("app==mlp", "app=mlp"),
        (" app != mlp ", "app!=mlp"),
        ("zone in (b, a)", "zone in (a,b)"),
        ("!x, y", "!x,y"),
        ("zone notin (c)", "zone notin (c)"),
        ("", ""),
    ],
)
def test_selectors_print_canonically_and_reparse(selector: str, canonical: str) -> None:
    parsed = labels.parse_selector(selector)
    assert str(parsed) == canonical
    assert labels.parse_selector(canonical) == parsed


def test_requirements_are_kept_in_order() -> None:
    parsed = labels.parse_selector("a=1,!b,c in (x,y)")
    assert [(r.key, r.operator) for r in parsed.requirements] == [
        ("a", labels.Operator.EQUALS),
        ("b", labels.Operator.NOT_EXISTS),
        ("c", labels.Operator.IN),
    ]
    assert parsed.requirements[2].values == frozenset({"x", "y"})
