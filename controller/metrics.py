"""Prometheus metrics of one orchestrator process, on a registry of its own.

A dedicated `CollectorRegistry`, never the global one: tests run several orchestrators in
one process, and each must expose only its own numbers.

Two kinds of metric, chosen by where the number lives:

- events counted where they happen (reconciles via `Manager.observe`, heartbeats,
  resolutions, re-placements, RPCs timed by the gRPC boundary's interceptor,
  `controller.services.rpc_timer`);
- state read at scrape time by custom collectors (PNodes by phase and allocations from the
  view, work-queue depth from `Manager.stats`), so the hot paths keep no gauges up to date.

Scrapes run on the HTTP server's thread while the event loop keeps changing the view; the
collectors only copy small dicts, and retry the copy if a dict changed size under them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar
from wsgiref import simple_server

import prometheus_client
from prometheus_client import core, registry

from api.resources import event as event_model
from controller.runtime import manager as manager_mod
from controller.state import store_watch as store_watch_mod
from controller.state import view as view_mod
from reconcilers import network_plan

log = logging.getLogger("dcnr.metrics")

T = TypeVar("T")

PNODE_PHASES = ("Ready", "NotReady", "Lost")
#: Why an allocation is moved or re-issued: the reasons of the plan's migrate and reissue rules.
REPLACEMENT_REASONS = tuple(
    rule.reason for rule in network_plan.RULES if rule.verdict in ("migrate", "reissue")
)
#: Reconcile durations span a cheap no-op (sub-millisecond) to a big placement batch.
RECONCILE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
RPC_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_FAILED = (manager_mod.Outcome.ERROR, manager_mod.Outcome.TERMINAL_ERROR)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry.CollectorRegistry()
        r = self.registry
        self.reconcile_duration = prometheus_client.Histogram(
            "dcnr_reconcile_duration_seconds",
            "Time one reconcile of one key took, by loop.",
            ["loop"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = prometheus_client.Counter(
            "dcnr_reconcile_errors",
            "Reconciles that raised (retried with backoff, or terminal), by loop.",
            ["loop"],
            registry=r,
        )
        self.replacements = prometheus_client.Counter(
            "dcnr_replacements",
            "Allocations moved to another PNode, by the rule that moved them.",
            ["reason"],
            registry=r,
        )
        self.heartbeats = prometheus_client.Counter(
            "dcnr_heartbeats",
            "Heartbeats answered, by result (active, fenced).",
            ["result"],
            registry=r,
        )
        self.resolutions = prometheus_client.Counter(
            "dcnr_resolutions", "VNodes resolved (each VNode of a batch counts).", registry=r
        )
        self.rpc_duration = prometheus_client.Histogram(
            "dcnr_rpc_duration_seconds",
            "Server-side time of gRPC calls (whole stream for streaming calls), by method "
            "and status code.",
            ["method", "code"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.validation_checks = prometheus_client.Counter(
            "dcnr_validation_checks",
            "Results checked by the orchestrator or reported checked by agents, by result "
            "(passed, failed).",
            ["result"],
            registry=r,
        )
        self.validation_disagreements = prometheus_client.Counter(
            "dcnr_validation_disagreements", "Redundant results that disagreed.", registry=r
        )
        self.validation_tiebreaks = prometheus_client.Counter(
            "dcnr_validation_tiebreaks", "Tiebreaker results requested.", registry=r
        )
        self.validation_disputes_judged = prometheus_client.Counter(
            "dcnr_validation_disputes_judged",
            "Strikes for a disputed result that a tiebreaker's majority, settling the same "
            "inputs, proved wrong.",
            registry=r,
        )
        self.bugged_transitions = prometheus_client.Counter(
            "dcnr_pnode_bugged_transitions", "PNodes that became Bugged.", registry=r
        )
        self.validation_reports_refused = prometheus_client.Counter(
            "dcnr_validation_reports_refused",
            "Validation reports refused (unauthenticated, fenced, not a neighbour of the "
            "accused VNode, stale epoch), by reason.",
            ["reason"],
            registry=r,
        )
        self.driver_results_refused = prometheus_client.Counter(
            "dcnr_driver_results_refused",
            "Results sent to the driver and refused (StaleEpoch: no such slot or epoch, i.e. "
            "work the sender was not assigned; StaleAttempt: no run waits for it; "
            "CheckFailed; ...), by reason.",
            ["reason"],
            registry=r,
        )
        self.rpc_refused = prometheus_client.Counter(
            "dcnr_rpc_refused",
            "Calls refused by authentication, authorization, admission or limits, by method "
            "and reason.",
            ["method", "reason"],
            registry=r,
        )
        self.inference_answers_exposed = prometheus_client.Counter(
            "dcnr_inference_answers_exposed",
            "Inference answers this replica returned with a VNode computed by one PNode "
            "alone (unchecked, under validation: adaptive or a single replica) whose PNode "
            "was later Bugged: each may hold one of its lies. The event UncheckedAnswers on "
            "the PNode names their request ids.",
            registry=r,
        )
        self.inference_results = prometheus_client.Counter(
            "dcnr_inference_results",
            "VNode results computed for inference requests, by role: primary (one per VNode "
            "and request), double_check (each further replica computing it to compare) or "
            "spot_check (a replica checking replica 0's result by a cheaper proof than "
            "recomputing it, dense: Freivalds'). Validation's extra compute is double_check "
            "/ primary plus spot_check / primary times a spot check's relative cost "
            "(benchmarks/README.md, Validation frontier).",
            ["role"],
            registry=r,
        )
        self.inference_moved_total = prometheus_client.Counter(
            "dcnr_inference_moved",
            "Inference answers thrown away and asked again because a trained VNode moved "
            "while the request travelled (it may have reached a fresh, never-restored "
            "instance).",
            registry=r,
        )
        self.events = prometheus_client.Counter(
            "dcnr_events",
            "Events recorded (each occurrence, also those aggregated into one stored event), "
            "by type (Normal, Warning) and reason.",
            ["type", "reason"],
            registry=r,
        )
        # Every label value known now is exported as 0 before its first event, so alerts
        # and rate() see a series from the first scrape (Prometheus practice); the
        # services' values come with `expect`, the loops' with `watch_manager`.
        for reason in REPLACEMENT_REASONS:
            self.replacements.labels(reason)
        for result in ("passed", "failed"):
            self.validation_checks.labels(result)
        for role in ("primary", "double_check", "spot_check"):
            self.inference_results.labels(role)
        for reason, kind in event_model.REASONS.items():
            self.events.labels(kind, reason)
        self._http: simple_server.WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def expect(
        self,
        *,
        heartbeat_results: Iterable[str] = (),
        report_refusals: Iterable[str] = (),
        driver_refusals: Iterable[str] = (),
    ) -> None:
        """Label values the services will count, exported as 0 until they do."""
        for result in heartbeat_results:
            self.heartbeats.labels(result)
        for reason in report_refusals:
            self.validation_reports_refused.labels(reason)
        for reason in driver_refusals:
            self.driver_results_refused.labels(reason)

    # -- event hooks ------------------------------------------------------------------------

    def observe_reconcile(self, event: manager_mod.Reconciled) -> None:
        """A `Manager.observe` callback."""
        self.reconcile_duration.labels(event.loop).observe(max(0.0, event.seconds))
        if event.outcome in _FAILED:
            self.reconcile_errors.labels(event.loop).inc()

    def replaced(self, reason: str, count: int = 1) -> None:
        self.replacements.labels(reason).inc(count)

    def event(self, type: str, reason: str) -> None:
        """A `controller.runtime.recorder.Recorder` sink."""
        self.events.labels(type, reason).inc()

    def heartbeat(self, result: str) -> None:
        self.heartbeats.labels(result).inc()

    def resolved(self, count: int = 1) -> None:
        self.resolutions.inc(count)

    def checked(self, passed: bool, count: int = 1) -> None:
        self.validation_checks.labels("passed" if passed else "failed").inc(count)

    def disagreed(self, count: int = 1) -> None:
        self.validation_disagreements.inc(count)

    def tiebroken(self, count: int = 1) -> None:
        self.validation_tiebreaks.inc(count)

    def dispute_judged(self) -> None:
        self.validation_disputes_judged.inc()

    def bugged(self, pnode_name: str = "") -> None:
        self.bugged_transitions.inc()

    def report_refused(self, reason: str) -> None:
        self.validation_reports_refused.labels(reason).inc()

    def driver_refused(self, reason: str) -> None:
        self.driver_results_refused.labels(reason).inc()

    def refused(self, method: str, reason: str) -> None:
        """One call refused before it did anything: its full method name
        ("/dcnr.v1.ResolutionService/Resolve") and why (Unauthenticated, Forbidden,
        ReadOnly, NotHosting, or another refusing part's own word)."""
        self.rpc_refused.labels(method, reason).inc()

    def answers_exposed(self, count: int) -> None:
        self.inference_answers_exposed.inc(count)

    def inference_computed(self, *, primary: int, double_check: int, spot_check: int = 0) -> None:
        self.inference_results.labels("primary").inc(primary)
        self.inference_results.labels("double_check").inc(double_check)
        self.inference_results.labels("spot_check").inc(spot_check)

    def inference_moved(self) -> None:
        self.inference_moved_total.inc()

    # -- state read at scrape time ----------------------------------------------------------

    def watch_manager(self, manager: manager_mod.Manager) -> None:
        """Reconcile durations and errors from its events, queue depth at scrape time."""
        manager.observe(self.observe_reconcile)
        for loop in manager.loop_names:
            self.reconcile_errors.labels(loop)
        self.registry.register(_QueueCollector(manager))

    def watch_view(self, view: view_mod.View) -> None:
        self.registry.register(_ViewCollector(view))

    def watch_store(self, watch: store_watch_mod.StoreWatch) -> None:
        """How much of the store this replica could not observe, read at scrape time."""
        self.registry.register(_StoreCollector(watch))

    def watch_pending(self, oldest: Callable[[], float]) -> None:
        """`dcnr_allocation_pending_oldest_seconds` from `oldest()` at scrape time."""
        self.registry.register(_PendingCollector(oldest))

    # -- RPCs -------------------------------------------------------------------------------

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        """One call served (`controller.services.rpc_timer` times them): its full method
        name and the status code it ended with."""
        self.rpc_duration.labels(method, code).observe(seconds)

    # -- HTTP -------------------------------------------------------------------------------

    def start_http(self, host: str, port: int) -> int:
        """Serve /metrics on a daemon thread; the bound port (useful with port 0)."""
        if self._http is not None:
            raise RuntimeError("metrics HTTP server already started")
        try:
            server, thread = prometheus_client.start_http_server(
                port, addr=host, registry=self.registry
            )
        except OSError as exc:
            raise OSError(f"--metrics-listen {host}:{port}: cannot bind ({exc})") from None
        self._http, self._http_thread = server, thread
        return int(server.server_port)

    def stop_http(self) -> None:
        """Blocks up to half a second (the server's poll interval): from the event loop,
        call it through `asyncio.to_thread`."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(timeout=5)
            self._http = self._http_thread = None

    def exposition(self) -> str:
        """The text a scrape would return (for `dcnr-orchestrator` debugging and tests)."""
        return prometheus_client.generate_latest(self.registry).decode()


def _copied(read: Callable[[], T]) -> T:
    """`read()` retried if a dict changed size under it (the event loop runs meanwhile)."""
    for _ in range(9):
        try:
            return read()
        except RuntimeError:
            continue
    return read()


class _ViewCollector(registry.Collector):
    def __init__(self, view: view_mod.View) -> None:
        self._view = view

    def collect(self) -> Iterable[core.Metric]:
        phases: list[str] = _copied(
            lambda: [p.status.phase for p in list(self._view.pnodes.values())]
        )
        by_phase = core.GaugeMetricFamily("dcnr_pnodes", "PNodes by phase.", labels=["phase"])
        for phase in PNODE_PHASES:
            by_phase.add_metric([phase], phases.count(phase))
        yield by_phase
        yield core.GaugeMetricFamily(
            "dcnr_allocations",
            "Allocations (placed VNode replica slots).",
            value=len(self._view.allocations),
        )
        yield core.CounterMetricFamily(
            "dcnr_view_full_reads",
            "Full reads of the store by the in-memory view: at start (after Gone it reads"
            " only what changed, see dcnr_view_relists).",
            value=self._view.full_reads,
        )
        yield core.CounterMetricFamily(
            "dcnr_view_resyncs",
            "Resyncs of the in-memory view (every --view-resync): a listing of every"
            " record's uid and version, then a read of those that changed.",
            value=self._view.resyncs,
        )
        yield core.CounterMetricFamily(
            "dcnr_view_resync_reads",
            "Records the view's resyncs read because the change feed had not brought them"
            " (flat but for writes during a resync's listing; growth means missed writes).",
            value=self._view.resync_reads,
        )
        yield core.CounterMetricFamily(
            "dcnr_view_relists",
            "Re-reads because the change feed no longer served the view's cursor (Gone): each"
            " a listing of every record's uid and version, then a read of those that changed.",
            value=self._view.relists_after_gone,
        )
        yield core.CounterMetricFamily(
            "dcnr_view_feed_changes",
            "Record changes the in-memory view read from the store's change feed.",
            value=self._view.feed_changes,
        )
        yield core.CounterMetricFamily(
            "dcnr_view_feed_held",
            "Of those, changes the view already held at that version or newer (mostly its"
            " own writes, applied when written), skipped without parsing the record.",
            value=self._view.feed_held,
        )


class _StoreCollector(registry.Collector):
    def __init__(self, watch: store_watch_mod.StoreWatch) -> None:
        self._watch = watch

    def collect(self) -> Iterable[core.Metric]:
        seen = self._watch.snapshot()
        yield core.GaugeMetricFamily(
            "dcnr_store_stalled_seconds",
            "How long this replica has been unable to complete a store round trip (0: the "
            "store answers); leases do not run meanwhile.",
            value=seen.stalled_seconds,
        )
        yield core.CounterMetricFamily(
            "dcnr_store_unobserved_seconds",
            "Seconds in all this replica could not observe the store (stalled or failing "
            "calls), which leases were held open for.",
            value=seen.unobserved_seconds_total,
        )
        yield core.CounterMetricFamily(
            "dcnr_store_failed_calls",
            "Store calls that failed without an answer from the store (unreachable, timed "
            "out after the backend's retries).",
            value=seen.failed_calls_total,
        )


class _PendingCollector(registry.Collector):
    def __init__(self, oldest: Callable[[], float]) -> None:
        self._oldest = oldest

    def collect(self) -> Iterable[core.Metric]:
        yield core.GaugeMetricFamily(
            "dcnr_allocation_pending_oldest_seconds",
            "How long the longest-waiting allocation has been Pending on a Ready PNode whose"
            " lease holds, as this replica sees it (0: none).",
            value=self._oldest(),
        )


class _QueueCollector(registry.Collector):
    def __init__(self, manager: manager_mod.Manager) -> None:
        self._manager = manager

    def collect(self) -> Iterable[core.Metric]:
        depth = core.GaugeMetricFamily(
            "dcnr_workqueue_depth", "Keys waiting in a loop's work queue.", labels=["loop"]
        )
        for loop in self._manager.loop_names:
            depth.add_metric([loop], self._manager.stats(loop).depth)
        yield depth
