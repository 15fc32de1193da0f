"""Prometheus metrics of one orchestrator process, on a registry of its own.

A dedicated `CollectorRegistry`, never the global one: tests run several orchestrators in
one process, and each must expose only its own numbers.

Two kinds of metric, chosen by where the number lives:

- events counted where they happen (reconciles via `Manager.observe`, heartbeats,
  resolutions, re-placements, RPCs via a server interceptor);
- state read at scrape time by custom collectors (PNodes by phase and allocations from the
  view, work-queue depth from `Manager.stats`), so the hot paths keep no gauges up to date.

Scrapes run on the HTTP server's thread while the event loop keeps changing the view; the
collectors only copy small dicts, and retry the copy if a dict changed size under them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from wsgiref import simple_server

import grpc
import prometheus_client
from grpc import aio
from prometheus_client import core, registry

from controller.runtime import manager as manager_mod
from controller.state import view as view_mod

log = logging.getLogger("dcnr.metrics")

T = TypeVar("T")

PNODE_PHASES = ("Ready", "NotReady", "Lost")
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
            "Heartbeats answered, by result (renewed, fenced, unauthenticated, ...).",
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
        self.inference_results = prometheus_client.Counter(
            "dcnr_inference_results",
            "VNode results computed for inference requests, by role: primary (one per VNode "
            "and request) or double_check (each further replica computing it to compare). "
            "The extra compute of validation is double_check / primary.",
            ["role"],
            registry=r,
        )
        self._http: simple_server.WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- event hooks ------------------------------------------------------------------------

    def observe_reconcile(self, event: manager_mod.Reconciled) -> None:
        """A `Manager.observe` callback."""
        self.reconcile_duration.labels(event.loop).observe(max(0.0, event.seconds))
        if event.outcome in _FAILED:
            self.reconcile_errors.labels(event.loop).inc()

    def replaced(self, reason: str, count: int = 1) -> None:
        self.replacements.labels(reason).inc(count)

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

    def bugged(self, pnode_name: str = "") -> None:
        self.bugged_transitions.inc()

    def report_refused(self, reason: str) -> None:
        self.validation_reports_refused.labels(reason).inc()

    def driver_refused(self, reason: str) -> None:
        self.driver_results_refused.labels(reason).inc()

    def inference_computed(self, *, primary: int, double_check: int) -> None:
        self.inference_results.labels("primary").inc(primary)
        self.inference_results.labels("double_check").inc(double_check)

    # -- state read at scrape time ----------------------------------------------------------

    def watch_manager(self, manager: manager_mod.Manager) -> None:
        """Reconcile durations and errors from its events, queue depth at scrape time."""
        manager.observe(self.observe_reconcile)
        self.registry.register(_QueueCollector(manager))

    def watch_view(self, view: view_mod.View) -> None:
        self.registry.register(_ViewCollector(view))

    # -- RPCs -------------------------------------------------------------------------------

    def interceptor(self) -> _Interceptor:
        return _RpcTimer(self.rpc_duration)

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


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs


if TYPE_CHECKING:
    _Interceptor: TypeAlias = aio.ServerInterceptor[Any, Any]
else:  # generic only in the stubs
    _Interceptor = aio.ServerInterceptor


class _RpcTimer(_Interceptor):
    """Times each call and labels it with the status it ended with.

    How a grpc.aio handler ends: returning (OK unless it set another code on the context),
    `context.abort` (raises AbortError; the code is on the context), any other exception
    (the server answers UNKNOWN), or cancellation (the client went away).
    """

    def __init__(self, histogram: prometheus_client.Histogram) -> None:
        self._histogram = histogram

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        method = handler_call_details.method
        record = self._recorder(method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, record),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(
                _timed_stream(handler.unary_stream, record),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming shapes: none in dcnr.v1 that we time

    def _recorder(self, method: str) -> Callable[[float, str], None]:
        def record(seconds: float, code: str) -> None:
            try:
                self._histogram.labels(method, code).observe(seconds)
            except Exception:
                log.exception("recording rpc latency failed")

        return record


def _code(context: Any, failure: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name  # set by abort() or set_code()
    if failure is None:
        return "OK"
    if isinstance(failure, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"


def _timed_unary(
    behavior: Callable[[Any, Any], Any], record: Callable[[float, str], None]
) -> Callable[[Any, Any], Any]:
    async def timed(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            record(time.perf_counter() - started, _code(context, failure))

    return timed


def _timed_stream(
    behavior: Callable[[Any, Any], AsyncIterator[Any]], record: Callable[[float, str], None]
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def timed(request: Any, context: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            async for message in behavior(request, context):
                yield message
        except BaseException as exc:
            failure = exc
            raise
        finally:
            record(time.perf_counter() - started, _code(context, failure))

    return timed
