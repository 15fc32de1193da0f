"""Prometheus metrics of one agent (`dcnr-agent --metrics-listen HOST:PORT`).

A registry of its own, never the global one, so tests running agents in one process keep
their numbers apart. Every label value known in advance is exported at 0 from the start, so
an alert on a refusal or a fence sees a series before the first one happens.

The agent and its data plane count through the small hooks here (`registered`,
`heartbeat`, `link`, `message`); the number of assignments is read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client import core, registry

from agent import peers

DIRECTIONS = ("forward", "backward")
HEARTBEAT_RESULTS = ("ok", "fenced", "failed")
REGISTRATION_RESULTS = ("registered", "failed", "refused")
#: The states of the agent's link to the orchestrator (`agent.link.State`).
LINK_STATES = ("connected", "lost", "reconnecting")
#: What a spot check this agent ran as a checker found (`agent.vnode.Received.spot`).
SPOT_RESULTS = ("passed", "failed", "recomputed")


class AgentMetrics:
    def __init__(self, refusal_reasons: Iterable[str]) -> None:
        """`refusal_reasons`: the reasons the data plane refuses a message with."""
        self.registry = registry.CollectorRegistry()
        r = self.registry
        self.messages = prometheus_client.Counter(
            "dcnr_agent_messages",
            "Forward and backward messages handled (duplicates included), by direction.",
            ["direction"],
            registry=r,
        )
        self.refused = prometheus_client.Counter(
            "dcnr_agent_messages_refused",
            "Forward and backward messages refused, by direction and reason.",
            ["direction", "reason"],
            registry=r,
        )
        self.heartbeats = prometheus_client.Counter(
            "dcnr_agent_heartbeats",
            "Heartbeats sent, by result: ok, fenced, failed (no answer or an error).",
            ["result"],
            registry=r,
        )
        self.registrations = prometheus_client.Counter(
            "dcnr_agent_registrations",
            "Register attempts, by result: registered, failed (retried), refused (final).",
            ["result"],
            registry=r,
        )
        self.connected = prometheus_client.Gauge(
            "dcnr_agent_orchestrator_connected",
            "1 while the orchestrator answers this agent's calls, 0 while it is lost or the "
            "agent is reconnecting.",
            registry=r,
        )
        self.link_changes = prometheus_client.Counter(
            "dcnr_agent_orchestrator_link_changes",
            "Changes of the link to the orchestrator, by the state entered: connected, lost, "
            "reconnecting (a fail-over to the next --orchestrator address).",
            ["state"],
            registry=r,
        )
        self.streams = prometheus_client.Counter(
            "dcnr_agent_delivery_streams",
            "Deliver streams to other agents, by event: opened, failed (connection lost, a "
            "message's deadline passed), unimplemented (the peer serves no Deliver: unary "
            "calls), closed (idle, or its channel replaced).",
            ["event"],
            registry=r,
        )
        for event in peers.STREAM_EVENTS:
            self.streams.labels(event)
        self.spot_checks = prometheus_client.Counter(
            "dcnr_agent_spot_checks",
            "Spot checks this agent ran as a checker replica (adaptive validation), by "
            "result: passed (the producer's output sent on), failed (its own recomputation "
            "sent instead; the children's comparison settles it), recomputed (the kind has "
            "no cheaper proof).",
            ["result"],
            registry=r,
        )
        for result in SPOT_RESULTS:
            self.spot_checks.labels(result)
        for state in LINK_STATES:
            self.link_changes.labels(state)
        for direction in DIRECTIONS:
            self.messages.labels(direction)
            for reason in refusal_reasons:
                self.refused.labels(direction, reason)
        for result in HEARTBEAT_RESULTS:
            self.heartbeats.labels(result)
        for result in REGISTRATION_RESULTS:
            self.registrations.labels(result)

    def watch_assignments(self, count: Callable[[], int]) -> None:
        """`count()`: the VNode assignments hosted now, read at each scrape."""
        self.registry.register(_Assignments(count))

    # -- hooks ------------------------------------------------------------------------------

    def message(self, *, forward: bool, refused: str | None) -> None:
        direction = DIRECTIONS[0] if forward else DIRECTIONS[1]
        if refused is None:
            self.messages.labels(direction).inc()
        else:
            self.refused.labels(direction, refused).inc()

    def stream(self, event: str) -> None:
        """A Deliver stream event (one of `agent.peers.STREAM_EVENTS`)."""
        self.streams.labels(event).inc()

    def spot_checked(self, result: str) -> None:
        self.spot_checks.labels(result).inc()

    def heartbeat(self, result: str) -> None:
        self.heartbeats.labels(result).inc()

    def registered(self, result: str) -> None:
        self.registrations.labels(result).inc()

    def link(self, state: str) -> None:
        """The link to the orchestrator entered `state` (one of LINK_STATES)."""
        self.link_changes.labels(state).inc()
        self.connected.set(1 if state == "connected" else 0)

    # -- HTTP -------------------------------------------------------------------------------

    def start_http(self, host: str, port: int) -> int:
        """Serve /metrics on a daemon thread; the bound port (useful with port 0)."""
        try:
            server, _thread = prometheus_client.start_http_server(
                port, addr=host, registry=self.registry
            )
        except OSError as exc:
            raise OSError(f"--metrics-listen {host}:{port}: cannot bind ({exc})") from None
        return int(server.server_port)


class _Assignments(registry.Collector):
    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterable[core.Metric]:
        yield core.GaugeMetricFamily(
            "dcnr_agent_assignments", "VNode assignments hosted.", value=self._count()
        )
