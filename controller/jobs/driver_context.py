"""What every training run and inference on one orchestrator replica shares, in parts.

`DriverContext` holds no logic of its own: it is the run environment (the store, the view,
the clock, the driver's configuration and this replica's id) and the parts built around it,
each with one job, all given at construction by the composition root (`controller.server`):

    client      the calls to agents (`vnode_client.VNodeClient`)
    results     where results and their verdicts go: the inbox, the trust book, the metrics
    suspects    which PNodes no work should go to (`controller.jobs.suspects`)
    tiebreakers requests and removal of tiebreaker replicas (`controller.jobs.tiebreakers`)
    reply_to    where agents reach this replica's inbox, known once the port is bound
    feed        every Job write on this replica, for watchers (`job_watch.JobFeed`)

The trust book and the metrics may be absent (None: not tracked, not counted), as in tests
that exercise the driver alone.
"""

from __future__ import annotations

import asyncio
import dataclasses

from controller import metrics as metrics_mod
from controller.jobs import driver_inbox, job_watch, vnode_client
from controller.jobs import suspects as suspects_mod
from controller.jobs import tiebreakers as tiebreakers_mod
from controller.runtime import clock as clock_mod
from controller.runtime import recorder
from controller.state import view as view_mod
from controller.trust import book as trust
from controller.trust import exposure as exposure_mod
from store import base


@dataclasses.dataclass(frozen=True, slots=True)
class DriverConfig:
    #: The blob store VNodes checkpoint under ("file:///dir/" or "s3://bucket/prefix/").
    blob_store: str = ""
    #: Where agents reach this replica's driver inbox (reply_to); empty until known.
    advertise: str = ""
    step_timeout: float = 10.0
    progress_every: float = 0.5
    rpc_timeout: float = 5.0
    #: The job loop looks at each running job this often (a dead driver is restarted).
    job_recheck: float = 2.0
    #: Paused runs re-check readiness, and the Job for a cancel, at least this often.
    ready_recheck: float = 1.0
    #: Backoff between rolled-back attempts: from the first, doubling up to the second, so
    #: a network that keeps failing is not restored in a tight loop.
    attempt_backoff: float = 0.1
    attempt_backoff_max: float = 5.0
    #: Attempts a run makes while a VNode of its network reports that it cannot start (its
    #: allocation Failed, e.g. params its agent refuses) before the job ends Failed with
    #: that reason. More than one: a VNode may fail on one PNode and be re-placed.
    vnode_failed_attempts: int = 3
    max_message_bytes: int = driver_inbox.DEFAULT_MAX_MESSAGE_BYTES


@dataclasses.dataclass(frozen=True, slots=True)
class ResultSinks:
    """Where results go: the inbox the agents deliver to, and where their verdicts are
    recorded. The composition root builds the inbox with the same book and disagreement
    counter, so a comparison the inbox decides and one a run decides land in one place."""

    inbox: driver_inbox.Inbox
    #: Where results' outcomes go (None: trust is not tracked).
    book: trust.TrustBook | None = None
    #: Where disagreements, tiebreaks and inference results are counted (None: not counted).
    metrics: metrics_mod.Metrics | None = None
    #: Answers returned with a VNode computed unchecked, by PNode (None: not remembered).
    exposure: exposure_mod.Exposure | None = None


class ReplyTo:
    """Where agents reach this replica's driver inbox. Given by configuration (`advertise`)
    or learned once the port is bound (the OS may choose it): runs wait until it is known,
    so none sends a reply_to nobody listens on."""

    def __init__(self, address: str = "") -> None:
        self._address = address
        self._known = asyncio.Event()
        if address:
            self._known.set()

    def bound(self, address: str) -> None:
        """The port is bound: tell the runs waiting, and every later one, where to listen."""
        self._address = address
        self._known.set()

    async def wait(self) -> str:
        await self._known.wait()
        return self._address


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DriverContext:
    """The run environment and the parts every run and inference on this replica shares."""

    store: base.Store
    view: view_mod.View
    clock: clock_mod.Clock
    config: DriverConfig
    replica_id: str
    client: vnode_client.VNodeClient
    results: ResultSinks
    suspects: suspects_mod.Suspects
    tiebreakers: tiebreakers_mod.Tiebreakers
    reply_to: ReplyTo
    feed: job_watch.JobFeed
    #: Hears of attempts, rollbacks and the end of runs, for people (`dcnctl get events`).
    events: recorder.Recorder | None = None
