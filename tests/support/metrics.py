"""Reading an orchestrator's /metrics as Prometheus does: over HTTP, parsed with the
prometheus-client text parser (not a regex over the exposition format)."""

from __future__ import annotations

import urllib.request

from prometheus_client import parser

#: (sample name, sorted label pairs) → value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: Samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of `name`, keyed by the value of their `label`."""
    return {
        dict(labels)[label]: value
        for (sample, labels), value in samples.items()
        if sample == name and label in dict(labels)
    }
