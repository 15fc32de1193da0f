"""ValidationService over a real gRPC socket, with a real SQLite store, view, trust book,
driver inbox and metrics: quorum reports (a loser is struck once, a dispute requests a
tiebreaker and strikes nobody), and the admission rules that keep a flood of reports about
work never assigned from costing anyone anything."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc import aio

from api import identity
from api.dcnr.v1 import common_pb2, validation_pb2, validation_pb2_grpc
from api.resources import allocation, meta, network, pnode
from controller import config as config_mod
from controller import metrics
from controller.jobs import driver_inbox
from controller.runtime import clock as clock_mod
from controller.runtime import recorder
from controller.services import validation_service
from controller.state import credentials
from controller.state import view as view_mod
from controller.trust import book as trust
from store import sqlite

CONFIG = config_mod.ControlPlaneConfig(view_refresh=60.0)
STEP = 5
DISPUTED = validation_pb2.CHECK_RESULT_DISPUTED
FAILED = validation_pb2.CHECK_RESULT_FAILED
PASSED = validation_pb2.CHECK_RESULT_PASSED
#: slot -> (pnode, epoch). Every replica of a VNode on its own PNode; p4 hosts nothing.
PLACED = {
    ("a", 0): ("p0", 1),
    ("a", 1): ("p1", 2),  # moved once: its epoch differs from replica 0's
    ("b", 0): ("p2", 1),
    ("b", 1): ("p3", 1),
    ("c", 0): ("p0", 1),
    ("c", 1): ("p1", 1),
}
PNODES = ("p0", "p1", "p2", "p3", "p4")


@dataclasses.dataclass
class Served:
    store: sqlite.SqliteStore
    view: view_mod.View
    book: trust.TrustBook
    box: driver_inbox.Mailbox
    metrics: metrics.Metrics
    stub: validation_pb2_grpc.ValidationServiceAsyncStub
    secrets: dict[str, str]
    events: recorder.Recorder
    clock: clock_mod.FakeClock

    async def report(
        self,
        reporter: str,
        subject: tuple[str, int, int],
        result: validation_pb2.CheckResult.ValueType,
        *,
        check: str = "quorum",
        step: int = STEP,
        evidence: Sequence[common_pb2.SignedMessage] = (),
        slot: tuple[int, int] = (0, 1),
    ) -> validation_pb2.ValidationVerdict.ValueType:
        """`slot`: the (replica, epoch) of b that received the result."""
        vnode, replica, epoch = subject
        reply = await self.stub.ReportResult(
            validation_pb2.ReportResultRequest(
                pnode_id=reporter,
                incarnation=1,
                job="train",
                step=step,
                network="net",
                vnode="b",
                replica=slot[0],
                epoch=slot[1],
                phase=validation_pb2.COMPUTE_PHASE_FORWARD,
                checks=[validation_pb2.CheckOutcome(check=check, result=result, message="x")],
                subject_vnode=vnode,
                subject_replica=replica,
                subject_epoch=epoch,
                evidence=evidence,
            ),
            metadata=(("authorization", f"Bearer {self.secrets[reporter]}"),),
        )
        return reply.verdict

    def counted(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(f"{name}_total", labels) or 0.0

    async def tiebreakers(self) -> list[str]:
        return (await self.store.get(network.Network, "net")).status.tiebreakers


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as it:
        yield it


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, *, verifier: identity.Verifier | None = None, max_evidence_bytes: int = 1 << 20
) -> AsyncIterator[Served]:
    """The service on a loopback port; `verifier`: accusations need evidence."""
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clock_mod.FakeClock()
    secrets = {}
    for name in PNODES:
        secret, digest = credentials.issue()
        secrets[name] = secret
        await store.create(
            pnode.PNode(
                metadata=meta.ObjectMeta(name=name),
                spec=pnode.PNodeSpec(address=f"{name}.test:1", credential_hash=digest),
                status=pnode.PNodeStatus(incarnation=1),
            )
        )
    await store.create(
        network.Network.model_validate(
            {
                "metadata": {"name": "net"},
                "spec": {
                    "validation": "replicas",
                    "vnodes": [
                        {"name": "a", "kind": "dense"},
                        {"name": "b", "kind": "dense", "inputs": ["a"]},
                        {"name": "c", "kind": "dense", "inputs": ["b"]},
                    ],
                },
            }
        )
    )
    for (vnode, replica), (where, epoch) in PLACED.items():
        await store.create(
            allocation.Allocation(
                metadata=meta.ObjectMeta(name=allocation.slot_name("net", vnode, replica)),
                spec=allocation.AllocationSpec(
                    network="net",
                    vnode=vnode,
                    replica=replica,
                    pnode=where,
                    epoch=epoch,
                    pnode_incarnation=1,
                ),
            )
        )
    view = view_mod.View(store, clock, config=CONFIG)
    await view.refresh()
    inbox = driver_inbox.Inbox(clock=clock)
    box = inbox.open(
        job="train", network="net", attempt=1, position=STEP, sinks={"c": 2}, sources={"a": 2}
    )
    counters = metrics.Metrics()
    # Neither started: flushed by the tests.
    events = recorder.Recorder(store=store, clock=clock, replica="r1")
    book = trust.TrustBook(store=store, clock=clock, events=events)
    service = validation_service.ValidationService(
        store=store,
        view=view,
        book=book,
        inbox=inbox,
        replica_id="r1",
        on_checked=counters.checked,
        on_refused=counters.report_refused,
        on_disagreed=counters.disagreed,
        on_tiebreak=counters.tiebroken,
        verifier=verifier,
        clock=clock,
        events=events,
        max_evidence_bytes=max_evidence_bytes,
    )
    server = aio.server()
    validation_pb2_grpc.add_ValidationServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    stub: validation_pb2_grpc.ValidationServiceAsyncStub = (
        validation_pb2_grpc.ValidationServiceStub(channel)
    )
    yield Served(store, view, book, box, counters, stub, secrets, events, clock)
    await channel.close(None)
    await server.stop(None)
    await store.close()


async def refused(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        await call  # type: ignore[misc]
    code: grpc.StatusCode = caught.value.code()
    return code


async def test_a_dispute_requests_one_tiebreaker_and_strikes_nobody(served: Served) -> None:
    # b.0 (p2) and b.1 (p3) both received a.0 and a.1 and found no majority.
    for reporter in ("p2", "p3"):
        verdict = await served.report(reporter, ("a", 0, 1), DISPUTED)
        assert verdict == validation_pb2.VALIDATION_VERDICT_DISPUTED
    assert await served.tiebreakers() == ["a"]
    assert served.view.networks["net"].status.tiebreakers == ["a"]  # the loop sees it now
    assert served.book.pending() == 0
    assert served.box.disputed == "a"
    assert served.box.failed is not None
    assert "tiebreaker" in served.box.failed
    assert served.counted("dcnr_validation_tiebreaks") == 1
    assert served.counted("dcnr_validation_disagreements") == 1  # one dispute, two reporters
    assert served.counted("dcnr_validation_checks", result="failed") == 0
    await served.book.flush()
    for name in PNODES:
        assert (await served.store.get(pnode.PNode, name)).status.trust.strikes == 0


async def test_a_dispute_may_name_the_epoch_of_any_replica(served: Served) -> None:
    # Replica 0 is at epoch 1, replica 1 at epoch 2: the reporter names replica 0 with either.
    assert await served.report("p2", ("a", 0, 2), DISPUTED) == (
        validation_pb2.VALIDATION_VERDICT_DISPUTED
    )
    assert await served.tiebreakers() == ["a"]
    code = await refused(served.report("p3", ("a", 0, 7), DISPUTED))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert served.counted("dcnr_validation_reports_refused", reason="stale-epoch") == 1
    assert await served.tiebreakers() == ["a"]


async def test_a_quorum_loser_is_struck_once_and_the_job_goes_on(served: Served) -> None:
    # a.1 (p1) lost to the majority; both replicas of b saw it and report it.
    for reporter in ("p2", "p3"):
        verdict = await served.report(reporter, ("a", 1, 2), FAILED)
        assert verdict == validation_pb2.VALIDATION_VERDICT_REJECTED
    assert served.book.pending() == 1
    assert served.box.failed is None  # the majority's result was used: no rollback
    assert served.box.struck == {"p1"}
    assert served.counted("dcnr_validation_disagreements") == 1
    assert served.counted("dcnr_validation_checks", result="failed") == 1
    assert await served.tiebreakers() == []
    # The next step's lie is another strike.
    await served.report("p2", ("a", 1, 2), FAILED, step=STEP + 1)
    await served.book.flush()
    struck = (await served.store.get(pnode.PNode, "p1")).status
    assert struck.trust.strikes == 2
    assert [(e.check, e.vnode) for e in struck.validation_events] == [("quorum", "a")] * 2


async def test_any_other_failed_check_strikes_and_rolls_back(served: Served) -> None:
    verdict = await served.report("p2", ("a", 0, 1), FAILED, check="finite")
    assert verdict == validation_pb2.VALIDATION_VERDICT_REJECTED
    assert served.book.pending() == 1
    assert served.box.failed is not None
    assert "finite" in served.box.failed
    assert served.box.disputed is None
    assert served.counted("dcnr_validation_disagreements") == 0
    assert await served.report("p2", ("a", 0, 1), PASSED, check="finite") == (
        validation_pb2.VALIDATION_VERDICT_ACCEPTED
    )
    assert served.counted("dcnr_validation_checks", result="passed") == 1


async def test_a_flood_from_a_pnode_without_neighbouring_work_is_refused(served: Served) -> None:
    """p4 hosts nothing: 50 reports of every kind, about every slot, are refused."""
    subjects = [(v, r, e) for (v, r), (_, e) in PLACED.items()]
    kinds = [(DISPUTED, "quorum"), (FAILED, "quorum"), (FAILED, "finite")]
    codes = []
    for i in range(50):
        result, check = kinds[i % len(kinds)]
        call = served.report("p4", subjects[i % len(subjects)], result, check=check, step=i)
        codes.append(await refused(call))
    assert codes == [grpc.StatusCode.PERMISSION_DENIED] * 50
    assert served.counted("dcnr_validation_reports_refused", reason="not-a-neighbour") == 50
    assert served.book.pending() == 0
    assert await served.tiebreakers() == []
    assert served.box.failed is None
    assert not served.box.struck
    assert served.counted("dcnr_validation_tiebreaks") == 0
    assert served.counted("dcnr_validation_disagreements") == 0


async def test_a_reporter_hosting_only_its_own_subject_is_not_a_neighbour(
    served: Served,
) -> None:
    # p0 hosts a.0 and c.0: neither is a parent or child of a.
    code = await refused(served.report("p0", ("a", 1, 2), FAILED))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    wrong = dataclasses.replace(served, secrets={**served.secrets, "p2": "forged"})
    code = await refused(wrong.report("p2", ("a", 1, 2), DISPUTED))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert served.counted("dcnr_validation_reports_refused", reason="unauthenticated") == 1
    assert served.book.pending() == 0
    assert await served.tiebreakers() == []


@pytest.mark.parametrize("secret", ["", "forged"])
async def test_a_report_answers_an_unknown_reporter_as_a_wrong_credential(
    served: Served, secret: str
) -> None:
    """Nothing in the answer tells a PNode name that exists from one that does not."""
    answers = []
    for reporter in ("p2", "never-registered"):
        forged = dataclasses.replace(served, secrets={reporter: secret})
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await forged.report(reporter, ("a", 1, 2), DISPUTED)
        error = caught.value
        answers.append((error.code(), error.details(), error.trailing_metadata()))
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.UNAUTHENTICATED
    assert served.counted("dcnr_validation_reports_refused", reason="unauthenticated") == 2
    assert served.book.pending() == 0
