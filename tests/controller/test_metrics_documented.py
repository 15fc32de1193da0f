"""README's Metrics table is what `/metrics` of a real `serve` exports, and every labelled
counter has a sample (at 0) for each label value it knows before its first event, so an
alert on it sees a series from the first scrape."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import metrics_core, parser

from tests.support import procs

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
_NAME = re.compile(r"`(dcnr_[a-z0-9_]+)")
#: Counters an alert watches for their first event (issue 14, item 15): each must export
#: every label value it knows at 0 before anything happened.
ZERO_FROM_THE_START = {
    "dcnr_reconcile_errors": "loop",
    "dcnr_replacements": "reason",
    "dcnr_validation_reports_refused": "reason",
    "dcnr_inference_results": "role",
    "dcnr_driver_results_refused": "reason",
    "dcnr_heartbeats": "result",
    "dcnr_rpc_refused": "reason",
}


def documented(prefix_excluded: str = "dcnr_agent_") -> set[str]:
    return {n for n in _NAME.findall(README.read_text()) if not n.startswith(prefix_excluded)}


def exported_families(port: int) -> list[metrics_core.Metric]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return list(parser.text_string_to_metric_families(response.read().decode()))


def exposed_name(family: metrics_core.Metric) -> str:
    """The name users query: a counter's samples carry `_total`."""
    return f"{family.name}_total" if family.type == "counter" else family.name


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> Iterator[list[metrics_core.Metric]]:
    tmp = tmp_path_factory.mktemp("metrics")
    with procs.orchestrator(
        f"sqlite:///{tmp / 'state.db'}", extra=["--metrics-listen", "127.0.0.1:0"]
    ) as served:
        assert served.metrics_port is not None
        yield exported_families(served.metrics_port)


def test_every_exported_metric_is_documented_and_every_documented_one_exported(
    families,
) -> None:
    names = {f.name for f in families}
    exported = {
        exposed_name(f)
        for f in families
        # prometheus-client's creation timestamps of counters and histograms.
        if f.name.startswith("dcnr_")
        and not (f.name.endswith("_created") and f.name.removesuffix("_created") in names)
    }
    assert exported == documented()


@pytest.mark.parametrize(("family", "label"), ZERO_FROM_THE_START.items())
def test_labelled_counters_export_their_known_values_at_zero(families, family, label) -> None:
    (found,) = [f for f in families if f.name == family]
    values = {
        s.labels[label]: s.value for s in found.samples if s.name == f"{family}_total"
    }
    assert values, f"{family} has no sample before its first event"
    assert set(values.values()) == {0.0}
