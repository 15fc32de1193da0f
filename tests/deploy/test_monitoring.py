"""The chart's monitoring: the alert rules pass `promtool check rules`, each alert fires on
synthetic series of its trouble and stays silent on healthy ones (`promtool test rules`,
tests/deploy/alerts_test.yaml), the dashboard's queries parse, and every metric an alert or
a panel queries — with the label values it selects — exists in a live scrape of a real
`dcnr-orchestrator serve`, so a renamed metric breaks this test, not the dashboard.

promtool comes from `make .tools/promtool` (PATH, else Debian's prometheus package as
root, else a loud failure with the install hint): never skipped.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from tests.support import agents as agents_mod
from tests.support import metrics, procs, wait

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "dcnr"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yaml")
OPERATIONS = REPO / "docs" / "operations.md"

#: A metric name in PromQL; `_bucket`, `_sum`, `_count` and `_total` stay on, because the
#: live scrape is compared sample name by sample name (stricter than the family).
_METRIC = re.compile(r"\b(dcnr_[a-z0-9_]+)")
#: `name{matchers}` in PromQL.
_SELECTOR = re.compile(r"\b(dcnr_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
#: Labels Prometheus adds from the target (not the orchestrator's own).
_TARGET_LABELS = {"namespace", "job", "instance", "service", "pod", "endpoint", "container"}
#: Grafana's variables, as a Prometheus would see them after Grafana substituted them.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}


def alert_rules() -> dict[str, str]:
    """Alert name → expression."""
    doc = yaml.safe_load(ALERTS.read_text())
    return {
        rule["alert"]: rule["expr"]
        for group in doc["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def dashboard_queries() -> dict[str, str]:
    """ "panel title / refId" → expression, with Grafana's variables substituted."""
    found: dict[str, str] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in _GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found[f"{panel['title']} / {target['refId']}"] = expr
    return found


def every_query() -> dict[str, str]:
    return {
        **{f"alert {name}": expr for name, expr in alert_rules().items()},
        **{f"panel {name}": expr for name, expr in dashboard_queries().items()},
    }


@pytest.fixture(scope="module")
def promtool() -> Path:
    made = subprocess.run(
        ["make", "--no-print-directory", ".tools/promtool"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, f"make .tools/promtool failed:\n{made.stdout}\n{made.stderr}"
    return REPO / ".tools" / "promtool"


def run(promtool: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_alert_rules_pass_promtool_check(promtool: Path) -> None:
    checked = run(promtool, "check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_each_alert_fires_on_trouble_and_not_on_health(promtool: Path) -> None:
    tested = run(promtool, "test", "rules", ALERT_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = set(alert_rules())
    assert names - fires == set(), "alerts no unit test sees firing"
    assert names - silent == set(), "alerts no unit test sees silent"


def test_dashboard_queries_parse(promtool: Path, tmp_path: Path) -> None:
    """Each panel's PromQL, as recording rules for promtool to parse."""
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dcnr_dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(queries.values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    checked = run(promtool, "check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_is_explained_in_operations_doc() -> None:
    text = OPERATIONS.read_text()
    missing = [name for name in alert_rules() if f"`{name}`" not in text]
    assert missing == [], f"docs/operations.md does not explain {missing}"


def test_the_dashboard_shows_what_the_issue_asks() -> None:
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    for wanted in (
        "PNodes by phase",
        "Placements and migrations",
        "Heartbeat latency",
        "Resolve latency",
        "Work queue depth",
        "Job events",
        "Validation checks",
    ):
        assert wanted in titles


# -- against a live scrape ---------------------------------------------------------------


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[metrics.Samples]:
    """A real serve with a real agent heartbeating, and one Resolve and BatchResolve call,
    so the RPC histogram has the methods the alerts and panels select."""
    tmp = tmp_path_factory.mktemp("monitoring")
    with (
        procs.orchestrator(
            f"sqlite:///{tmp / 'state.db'}", extra=["--metrics-listen", "127.0.0.1:0"]
        ) as served,
        agents_mod.agents(served.address, tmp, 1),
    ):
        assert served.metrics_port is not None
        port = served.metrics_port
        with grpc.insecure_channel(served.address) as channel:
            for method in ("Resolve", "BatchResolve"):
                call = channel.unary_unary(
                    f"/dcnr.v1.ResolutionService/{method}",
                    request_serializer=bytes,
                    response_deserializer=bytes,
                )
                # An empty request: whatever the answer, the call is timed.
                with contextlib.suppress(grpc.RpcError):
                    call(b"", timeout=10)

        def methods(samples: metrics.Samples) -> set[str]:
            return set(metrics.by_label(samples, "dcnr_rpc_duration_seconds_count", "method"))

        yield wait.until_sync(
            lambda: metrics.scrape(port),
            within=30,
            what="heartbeats and resolves timed in /metrics",
            accept=lambda s: (
                {
                    "/dcnr.v1.PNodeService/Heartbeat",
                    "/dcnr.v1.ResolutionService/Resolve",
                    "/dcnr.v1.ResolutionService/BatchResolve",
                }
                <= methods(s)
            ),
            every=0.2,
        )


def _matches(op: str, want: str, value: str) -> bool:
    if op == "=":
        return value == want
    if op == "=~":
        return re.fullmatch(want, value) is not None
    if op == "!=":
        return value != want
    return re.fullmatch(want, value) is None


#: The one series not of ours a rule may query: Prometheus' own scrape health of the
#: orchestrator, under the job name the chart's ServiceMonitor gives its targets.
UP = 'up{job="dcnr-orchestrator"}'


def test_the_service_monitor_names_the_job_the_alerts_select() -> None:
    assert any(UP in expr for expr in alert_rules().values())
    monitor = (CHART / "templates" / "monitoring-servicemonitor.yaml").read_text()
    assert "targetLabel: job" in monitor
    assert "replacement: dcnr-orchestrator" in monitor


@pytest.mark.slow
@pytest.mark.parametrize(("where", "expr"), every_query().items(), ids=list(every_query()))
def test_every_metric_queried_exists_in_a_live_scrape(
    scraped: metrics.Samples, where: str, expr: str
) -> None:
    names = {name for name, _ in scraped}
    used = set(_METRIC.findall(expr))
    if not used:
        assert UP in expr, f"{where} queries no dcnr_ metric: {expr}"
        return
    assert used <= names, f"{where} queries {sorted(used - names)}, not in /metrics"
    for name, body in _SELECTOR.findall(expr):
        for label, op, want in _MATCHER.findall(body):
            if label in _TARGET_LABELS:
                continue
            values = [dict(labels).get(label, "") for sample, labels in scraped if sample == name]
            assert any(_matches(op, want, v) for v in values), (
                f"{where}: no {name} sample has {label}{op}{want!r} (seen: {sorted(set(values))})"
            )
