"""Applying a network plan: one transaction per action, capacity accounting included.

The table of what each transaction holds is in `reconcilers.network`. The Applier keeps the
records it has written (the store returns them), so a later action of the same pass that
touches the same PNode or Network is conditioned on our own write, not on the stale read:
without that, the second placement on a PNode would always conflict with the first.

Placements are the exception to "one transaction per action": consecutive Place actions
(`grouped`) are written together, as many as fit in one transaction (`MAX_TRANSACTION_OPS`:
one Create each, one Update per distinct PNode carrying the sum of its charges, one Check of
the network). A transaction costs a durable commit (an fsync on SQLite, a round trip on
DynamoDB) whatever it holds, so a network of a thousand VNodes is placed in tens of commits
instead of a thousand. The guarantees are unchanged: every op is still conditioned on what
was read, the whole group lands or none of it does, and a failure requeues the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from api.resources import allocation as allocation_model
from api.resources import amounts, meta
from api.resources import network as network_model
from api.resources import pnode as pnode_model
from reconcilers import network_actions
from store import base as store_base
from store import errors

Written = Callable[[list[meta.Resource]], None]
#: What the Applier applies: one action, or a run of placements written together.
Step = network_actions.Action | tuple[network_actions.Place, ...]
Deleted = Callable[[type[meta.Resource], str], None]

Allocation = allocation_model.Allocation
Network = network_model.Network
PNode = pnode_model.PNode
ResourceRequest = network_model.ResourceRequest


class OverCommit(Exception):
    """A charge would take a PNode past its capacity: the plan disagrees with the records.

    Never expected (the plan is computed from these very records, and every write is
    conditioned on them); refusing the write keeps invariant 1 even if the plan is wrong.
    """


class Applier:
    def __init__(
        self,
        store: store_base.Store,
        network: Network | None,
        pnodes: Mapping[str, PNode] | Iterable[PNode],
        on_written: Written | None,
        on_deleted: Deleted | None,
    ) -> None:
        """`pnodes`: the records the plan was computed from, by name or as a list; a
        mapping is copied (the informer's goes on changing while this applies)."""
        self._store = store
        #: The freshest copy of the Network (None: stopping orphans of a deleted one).
        self.network = network
        self._pnodes: dict[str, PNode] = (
            dict(pnodes)
            if isinstance(pnodes, Mapping)
            else {p.metadata.name: p for p in pnodes}
        )
        self._on_written = on_written
        self._on_deleted = on_deleted

    async def apply(self, action: Step) -> None:
        if isinstance(action, tuple):
            await self._place_group(action)
        elif isinstance(action, network_actions.Place):
            await self._place(action)
        elif isinstance(action, network_actions.Migrate):
            await self._migrate(action)
        elif isinstance(action, network_actions.Reissue):
            await self._reissue(action)
        elif isinstance(action, network_actions.Stop):
            await self._stop(action)

    def written(self, records: list[meta.Resource]) -> None:
        for record in records:
            if isinstance(record, PNode):
                self._pnodes[record.metadata.name] = record
            elif isinstance(record, Network):
                self.network = record
        if self._on_written is not None and records:
            self._on_written(records)

    async def _place(self, action: network_actions.Place) -> None:
        pnode = self._pnode(action.pnode)
        record = action.record()
        ops: list[store_base.Op] = [
            store_base.Create(record),
            store_base.Update(charged(pnode, add=action.resources, gained=[record])),
        ]
        await self._commit([*ops, *self._network_check()])

    async def _place_group(self, places: Sequence[network_actions.Place]) -> None:
        """Placements in as few transactions as fit; each PNode updated once per
        transaction, charged with everything placed on it there."""
        for chunk in _chunks(places, budget=store_base.MAX_TRANSACTION_OPS - 1):
            records = [place.record() for place in chunk]
            # One copy of each PNode per transaction, charged with all it gains there.
            gains: dict[str, list[tuple[network_actions.Place, Allocation]]] = {}
            for place, record in zip(chunk, records, strict=True):
                gains.setdefault(place.pnode, []).append((place, record))
            ops: list[store_base.Op] = [store_base.Create(record) for record in records]
            for name, gained in gains.items():
                ops.append(
                    store_base.Update(
                        charged(
                            self._pnode(name),
                            add=[place.resources for place, _ in gained],
                            gained=[record for _, record in gained],
                            bumps=len(gained),
                        )
                    )
                )
            await self._commit([*ops, *self._network_check()])

    async def _migrate(self, action: network_actions.Migrate) -> None:
        old_spec = action.allocation.spec
        target = self._pnode(action.to_pnode)
        old = self._pnodes.get(old_spec.pnode)
        record, was = action.record(), action.allocation
        ops: list[store_base.Op] = [store_base.Update(record)]
        if old is not None and old.metadata.name == target.metadata.name:
            ops.append(
                store_base.Update(
                    charged(
                        target,
                        add=action.resources,
                        remove=old_spec.resources,
                        gained=[record],
                        lost=[was],
                    )
                )
            )
        else:
            ops.append(store_base.Update(charged(target, add=action.resources, gained=[record])))
            if old is not None:
                ops.append(store_base.Update(charged(old, remove=old_spec.resources, lost=[was])))
        await self._commit([*ops, *self._network_check()])

    async def _reissue(self, action: network_actions.Reissue) -> None:
        old_spec = action.allocation.spec
        pnode = self._pnode(old_spec.pnode)
        record = action.record()
        ops: list[store_base.Op] = [
            store_base.Update(record),
            store_base.Update(
                charged(
                    pnode,
                    add=action.resources,
                    remove=old_spec.resources,
                    gained=[record],
                    lost=[action.allocation],
                )
            ),
        ]
        await self._commit([*ops, *self._network_check()])

    async def _stop(self, action: network_actions.Stop) -> None:
        alloc = action.allocation
        ops: list[store_base.Op] = [
            store_base.Delete(
                Allocation,
                alloc.metadata.name,
                resource_version=alloc.metadata.resource_version,
                uid=alloc.metadata.uid,
            )
        ]
        pnode = self._pnodes.get(alloc.spec.pnode)
        if pnode is not None:
            ops.append(store_base.Update(charged(pnode, remove=alloc.spec.resources, lost=[alloc])))
        if action.remember_epoch and self.network is not None:
            network = self.network.model_copy(deep=True)
            epochs = network.status.slot_epochs
            epochs[alloc.metadata.name] = max(alloc.spec.epoch, epochs.get(alloc.metadata.name, 0))
            ops.append(store_base.Update(network))
        await self._commit(ops)
        if self._on_deleted is not None:
            self._on_deleted(Allocation, alloc.metadata.name)

    async def _commit(self, ops: list[store_base.Op]) -> None:
        results = await self._store.transact(ops)
        self.written([record for record in results if record is not None])

    def _network_check(self) -> list[store_base.Op]:
        if self.network is None:
            return []
        meta_ = self.network.metadata
        return [store_base.Check(Network, meta_.name, meta_.resource_version, meta_.uid)]

    def _pnode(self, name: str) -> PNode:
        pnode = self._pnodes.get(name)
        if pnode is None:  # the plan only targets PNodes it was given; so, gone meanwhile
            raise errors.NotFound(f"pnode {name!r} not found", kind=PNode.KIND, name=name)
        return pnode


def grouped(actions: Iterable[network_actions.Action]) -> list[Step]:
    """The actions in order, each run of consecutive Place actions as one tuple."""
    steps: list[Step] = []
    run: list[network_actions.Place] = []
    for action in actions:
        if isinstance(action, network_actions.Place):
            run.append(action)
            continue
        if run:
            steps.append(tuple(run))
            run = []
        steps.append(action)
    if run:
        steps.append(tuple(run))
    return steps


def _chunks(
    places: Sequence[network_actions.Place], *, budget: int
) -> list[list[network_actions.Place]]:
    """Split into runs whose ops (a Create each plus an Update per distinct PNode) fit in
    `budget`; a run never splits one PNode's placements across two of them needlessly."""
    chunks: list[list[network_actions.Place]] = []
    current: list[network_actions.Place] = []
    pnodes: set[str] = set()
    for place in places:
        extra = 1 + (place.pnode not in pnodes)
        if current and len(current) + len(pnodes) + extra > budget:
            chunks.append(current)
            current, pnodes = [], set()
        current.append(place)
        pnodes.add(place.pnode)
    if current:
        chunks.append(current)
    return chunks


def charged(
    pnode: PNode,
    *,
    add: ResourceRequest | Sequence[ResourceRequest] | None = None,
    remove: ResourceRequest | None = None,
    gained: Sequence[Allocation] = (),
    lost: Sequence[Allocation] = (),
    bumps: int = 1,
) -> PNode:
    """A copy of `pnode` with `add` charged (one request or several) and `remove` released
    (the one capacity arithmetic, `api.resources.amounts`), its assignment set's version
    bumped (`bumps` times: once per placement it stands for) and its digest moved from the
    allocations `lost` (as they were read) to those `gained` (as written), so the version
    and the set it stands for change in one write. Raises OverCommit if a resource the
    change increases ends up above capacity (a release alone never fails, even on an
    over-committed PNode).

    The copy is shallow except for what it changes (the status and its `allocated`): the
    spec, metadata, conditions and history are shared with `pnode`, which may be the
    informer's record, so neither is ever changed in place (the store writes a new record
    from it). A deep copy per placement cost more than the placement (issue 13)."""
    record = pnode.model_copy()
    record.status = pnode.status.model_copy()
    allocated = record.status.allocated = pnode.status.allocated.model_copy()
    before = amounts.of_capacity(allocated)
    after = before
    adding = [add] if isinstance(add, ResourceRequest) else list(add or ())
    for request in adding:
        after = amounts.charged(after, amounts.of_request(request), +1)
    if remove is not None:
        after = amounts.charged(after, amounts.of_request(remove), -1)
    was, limits = before.named(), amounts.of_capacity(record.spec.capacity).named()
    for what, amount in after.named().items():
        if amount > was.get(what, 0) and amount > limits.get(what, 0):
            raise OverCommit(
                f"pnode {pnode.metadata.name!r}: {what} would be {amount}, above its capacity "
                f"{limits.get(what, 0)}"
            )
    allocated.cpu, allocated.memory = after.cpu, after.memory
    if after.accelerators != before.accelerators:
        allocated.accelerators = [
            pnode_model.Accelerator.model_construct(type=kind, count=number, memory=0)
            for kind, number in after.accelerators
        ]
    record.status.assignments_version += bumps
    if record.status.assignments_digest is not None:
        record.status.assignments_digest = allocation_model.folded(
            record.status.assignments_digest, gained=gained, lost=lost
        )
    return record
