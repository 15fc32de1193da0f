"""ValidationService with an identity CA, over a real gRPC socket: an accusation strikes the
accused only when the accused's own signed result proves it (the check, run again here,
fails; the signed replica results, compared here, outvote it); otherwise the accuser pays a
strike, both PNodes get an AccusationRefused event, and the refusal is counted by reason.

The network of tests/controller/services/test_validation_service.py: dense VNodes a -> b ->
c, two replicas each; p2 hosts b.0, so it receives a's results."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from api.dcnr.v1 import common_pb2, validation_pb2
from api.resources import allocation, event, meta, pnode
from tests.controller.services.test_validation_service import (
    DISPUTED,
    FAILED,
    PLACED,
    PNODES,
    STEP,
    Served,
    refused,
    serving,
)
from tests.support import evidence as signed_support

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)  # the FakeClock's wall clock
LIE = np.array([[1.0, np.nan]], dtype=np.float32)
HONEST = np.array([[1.0, 2.0]], dtype=np.float32)
OTHER = np.array([[3.0, 4.0]], dtype=np.float32)
REPORTER = ("b", 0, 1)  # on p2
REJECTED = validation_pb2.VALIDATION_VERDICT_REJECTED


@pytest.fixture(scope="module")
def ids() -> signed_support.Identities:
    return signed_support.Identities(PNODES, now=NOW)


@pytest.fixture
async def served(tmp_path: Path, ids: signed_support.Identities) -> AsyncIterator[Served]:
    async with serving(tmp_path, verifier=ids.verifier) as it:
        yield it


def signed(
    ids: signed_support.Identities,
    array: np.ndarray,
    replica: int,
    *,
    signer: str | None = None,
    key_of: str | None = None,
    step: int = STEP,
) -> common_pb2.SignedMessage:
    """a replica `replica`'s Forward of `array` to b.0, signed by its host (or `signer`)."""
    where, epoch = PLACED.get(("a", replica), ("p4", 1))
    request = signed_support.forward(
        array, sender=("a", replica, epoch), target=REPORTER, step=step
    )
    return ids.sign(signer or where, request, key_of=key_of)


async def strikes(served: Served) -> dict[str, int]:
    await served.book.flush()
    return {n: (await served.store.get(pnode.PNode, n)).status.trust.strikes for n in PNODES}


async def accusations(served: Served, name: str) -> list[tuple[str, str, str]]:
    await served.events.flush()
    page = await served.store.list(event.Event, index=("object", f"PNode/{name}"))
    found = [
        event.parse_accusation(e.message) for e in page.items if e.reason == "AccusationRefused"
    ]
    return [f for f in found if f is not None]


async def test_a_genuine_failing_signed_result_strikes_the_accused(
    served: Served, ids: signed_support.Identities
) -> None:
    verdict = await served.report(
        "p2", ("a", 0, 1), FAILED, check="finite", evidence=[signed(ids, LIE, 0)]
    )
    assert verdict == REJECTED
    assert served.box.failed is not None
    assert "checked again" in served.box.failed
    assert (await strikes(served))["p0"] == 1
    assert (await strikes(served))["p2"] == 0
    assert await accusations(served, "p0") == []


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no evidence", "no-evidence"),
        ("the check passes again", "unconvincing"),
        ("forged signature", "bad-evidence"),
        ("signed by another pnode", "wrong-signer"),
        ("another step", "evidence-mismatch"),
    ],
)
async def test_an_unproven_accusation_costs_the_accuser(
    served: Served, ids: signed_support.Identities, case: str, reason: str
) -> None:
    proof = {
        "no evidence": [],
        "the check passes again": [signed(ids, HONEST, 0)],
        "forged signature": [signed(ids, LIE, 0, key_of="p2")],
        "signed by another pnode": [signed(ids, LIE, 0, signer="p2")],
        "another step": [signed(ids, LIE, 0, step=STEP + 1)],
    }[case]
    call = served.report("p2", ("a", 0, 1), FAILED, check="finite", evidence=proof)
    assert await refused(call) == grpc.StatusCode.PERMISSION_DENIED
    assert served.counted("dcnr_validation_reports_refused", reason=reason) == 1
    assert served.box.failed is None
    assert served.counted("dcnr_validation_checks", result="failed") == 0
    struck = await strikes(served)
    assert (struck["p0"], struck["p2"]) == (0, 1)
    record = (await served.store.get(pnode.PNode, "p2")).status.validation_events
    assert [e.check for e in record] == ["false-accusation"]
    for name in ("p0", "p2"):
        [(accuser, accused, detail)] = await accusations(served, name)
        assert (accuser, accused) == ("p2", "p0")
        assert reason in detail
    page = await served.store.list(event.Event, index=("object", "PNode/p2"))
    [strike] = [e.message for e in page.items if e.reason == "Strike"]
    assert strike == "accusation against a refused: no proof"


async def test_a_slot_that_moved_since_costs_nobody(
    served: Served, ids: signed_support.Identities
) -> None:
    moved = signed_support.forward(LIE, sender=("a", 0, 0), target=REPORTER)
    call = served.report(
        "p2", ("a", 0, 1), FAILED, check="finite", evidence=[ids.sign("p0", moved)]
    )
    assert await refused(call) == grpc.StatusCode.FAILED_PRECONDITION
    assert served.counted("dcnr_validation_reports_refused", reason="stale-evidence") == 1
    assert set((await strikes(served)).values()) == {0}
    assert await accusations(served, "p2") == []


async def test_evidence_is_bounded_before_any_work(
    served: Served, ids: signed_support.Identities
) -> None:
    one = signed(ids, LIE, 0)
    call = served.report("p2", ("a", 0, 1), FAILED, check="finite", evidence=[one] * 17)
    assert await refused(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
    huge = common_pb2.SignedMessage(method=one.method, body=b"x" * ((1 << 20) + 1))
    with pytest.raises(grpc.RpcError) as caught:
        await served.report("p2", ("a", 0, 1), FAILED, check="finite", evidence=[huge])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "evidence[0].body" in (caught.value.details() or "")
    assert set((await strikes(served)).values()) == {0}


async def test_signed_conflicting_replicas_settle_by_majority(
    served: Served, ids: signed_support.Identities
) -> None:
    """Two differing signed results prove a dispute; the tiebreaker's signed result then
    makes a majority, and only the replica outside it is struck."""
    agree = [signed(ids, HONEST, 0), signed(ids, HONEST, 1)]
    call = served.report("p2", ("a", 0, 1), DISPUTED, evidence=agree)
    assert await refused(call) == grpc.StatusCode.PERMISSION_DENIED  # nothing disagrees
    assert await served.tiebreakers() == []
    differ = [signed(ids, HONEST, 0), signed(ids, OTHER, 1)]
    assert await served.report("p2", ("a", 0, 1), DISPUTED, evidence=differ) == (
        validation_pb2.VALIDATION_VERDICT_DISPUTED
    )
    assert await served.tiebreakers() == ["a"]
    # The tiebreaker a.2 runs on p4 and agrees with a.0: a.1 (p1) lost.
    await served.store.create(
        allocation.Allocation(
            metadata=meta.ObjectMeta(name=allocation.slot_name("net", "a", 2)),
            spec=allocation.AllocationSpec(
                network="net", vnode="a", replica=2, pnode="p4", epoch=1, pnode_incarnation=1
            ),
        )
    )
    await served.view.refresh()
    step = [signed(ids, a, r, step=STEP + 1) for r, a in enumerate((HONEST, OTHER, HONEST))]
    # Accusing a replica of the majority is refused, and costs p2 a second strike.
    call = served.report("p2", ("a", 0, 1), FAILED, evidence=step, step=STEP + 1)
    assert await refused(call) == grpc.StatusCode.PERMISSION_DENIED
    assert await served.report("p2", ("a", 1, 2), FAILED, evidence=step, step=STEP + 1) == (
        REJECTED
    )
    assert served.counted("dcnr_validation_reports_refused", reason="unconvincing") == 2
    struck = await strikes(served)
    assert (struck["p0"], struck["p1"], struck["p2"], struck["p4"]) == (0, 1, 2, 0)
