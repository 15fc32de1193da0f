"""Applying a network plan: one transaction per action, capacity accounting included.

The table of what each transaction holds is in `reconcilers.network`. The Applier keeps the
records it has written (the store returns them), so a later action of the same pass that
touches the same PNode or Network is conditioned on our own write, not on the stale read:
without that, the second placement on a PNode would always conflict with the first.

Placements and migrations are the exceptions to "one transaction per action": consecutive
Place actions, and consecutive Migrate actions (`grouped`), are written together, as many as
fit in one transaction (`MAX_TRANSACTION_OPS`: a Create or Update of each allocation, one
Update per distinct PNode carrying the sum of its charges and releases, one Check of the
network). A transaction costs a durable commit (an fsync on SQLite, a round trip on
DynamoDB) whatever it holds, so a network of a thousand VNodes is placed in tens of commits
instead of a thousand, and the work of a lost PNode moves in one or two commits per network
instead of one per VNode (issue 13: each commit was also a write-through into the view and
an assignment update to the agents). A migration touches two PNodes (it charges its target
and releases its source), so a group counts the distinct PNodes of both sides. The
guarantees are unchanged: every op is still conditioned on what was read, the whole group
lands or none of it does (capacity is checked on each PNode's net change, which is what
the transaction commits), and a failure requeues the pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from api.resources import allocation as allocation_model
from api.resources import amounts, meta
from api.resources import network as network_model
from api.resources import pnode as pnode_model
from reconcilers import network_actions
from store import base as store_base
from store import errors

Written = Callable[[list[meta.Resource]], None]
#: What the Applier applies: one action, or a run of placements or of migrations written
#: together.
Step = (
    network_actions.Action | tuple[network_actions.Place, ...] | tuple[network_actions.Migrate, ...]
)
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
            places = [a for a in action if isinstance(a, network_actions.Place)]
            migrations = [a for a in action if isinstance(a, network_actions.Migrate)]
            if places and migrations:
                raise TypeError("a group holds placements or migrations, not both")
            if places:
                await self._place_group(places)
            elif migrations:
                await self._migrate_group(migrations)
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
        for chunk in _chunks(places, budget=store_base.MAX_TRANSACTION_OPS - 1, pnodes=_targets):
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

    async def _migrate_group(self, migrations: Sequence[network_actions.Migrate]) -> None:
        """Migrations in as few transactions as fit; each PNode updated once per
        transaction, charged with every allocation moving onto it there and released of
        every one moving off it (the same arithmetic as one `_migrate` after another)."""
        for chunk in _chunks(migrations, budget=store_base.MAX_TRANSACTION_OPS - 1, pnodes=_ends):
            records = [migration.record() for migration in chunk]
            ops: list[store_base.Op] = [store_base.Update(record) for record in records]
            changes: dict[str, _Change] = {}
            for migration, record in zip(chunk, records, strict=True):
                was = migration.allocation
                target = changes.setdefault(migration.to_pnode, _Change())
                target.add.append(migration.resources)
                target.gained.append(record)
                target.moves += 1
                source_name = was.spec.pnode
                if source_name not in self._pnodes:
                    continue  # gone: nothing left to release (as in `_migrate`)
                source = changes.setdefault(source_name, _Change())
                source.remove.append(was.spec.resources)
                source.lost.append(was)
                if source_name != migration.to_pnode:
                    source.moves += 1
            for name, change in changes.items():
                ops.append(
                    store_base.Update(
                        charged(
                            self._pnode(name),
                            add=change.add,
                            remove=change.remove,
                            gained=change.gained,
                            lost=change.lost,
                            bumps=change.moves,
                        )
                    )
                )
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


def touched(
    actions: Iterable[network_actions.Action], pnodes: Mapping[str, PNode]
) -> dict[str, PNode]:
    """The records of `pnodes` that applying `actions` reads (each target, each source),
    for an `Applier`: a copy of those alone, not of every PNode, which at 100,000 PNodes
    was a walk per pass (issue 13). A name `pnodes` lacks stays out, as it would from a
    full copy: the Applier finds it gone."""
    names: set[str] = set()
    for action in actions:
        if isinstance(action, network_actions.Place):
            names.add(action.pnode)
        elif isinstance(action, network_actions.Migrate):
            names.update((action.to_pnode, action.allocation.spec.pnode))
        elif isinstance(action, network_actions.Reissue | network_actions.Stop):
            names.add(action.allocation.spec.pnode)
    return {name: pnodes[name] for name in names if name in pnodes}


def grouped(actions: Iterable[network_actions.Action]) -> list[Step]:
    """The actions in order, each run of consecutive Place actions as one tuple, and each
    run of consecutive Migrate actions as another."""
    steps: list[Step] = []
    places: list[network_actions.Place] = []
    migrations: list[network_actions.Migrate] = []

    def flush() -> None:
        if places:
            steps.append(tuple(places))
            places.clear()
        if migrations:
            steps.append(tuple(migrations))
            migrations.clear()

    for action in actions:
        if isinstance(action, network_actions.Place):
            if migrations:
                flush()
            places.append(action)
        elif isinstance(action, network_actions.Migrate):
            if places:
                flush()
            migrations.append(action)
        else:
            flush()
            steps.append(action)
    flush()
    return steps


@dataclasses.dataclass(slots=True)
class _Change:
    """What one transaction of migrations does to one PNode."""

    add: list[ResourceRequest] = dataclasses.field(default_factory=list)
    remove: list[ResourceRequest] = dataclasses.field(default_factory=list)
    gained: list[Allocation] = dataclasses.field(default_factory=list)
    lost: list[Allocation] = dataclasses.field(default_factory=list)
    #: Migrations touching the PNode: its assignments version is bumped once for each.
    moves: int = 0


def _targets(place: network_actions.Place) -> tuple[str, ...]:
    return (place.pnode,)


def _ends(migration: network_actions.Migrate) -> tuple[str, ...]:
    """The PNodes a migration's transaction updates: its target, and its source."""
    return (migration.to_pnode, migration.allocation.spec.pnode)


_A = TypeVar("_A", network_actions.Place, network_actions.Migrate)


def _chunks(
    actions: Sequence[_A], *, budget: int, pnodes: Callable[[_A], tuple[str, ...]]
) -> list[list[_A]]:
    """Split into runs whose ops (one per allocation plus an Update per distinct PNode
    `pnodes` names) fit in `budget`; a run is cut only when the next action would not fit."""
    chunks: list[list[_A]] = []
    current: list[_A] = []
    touched: set[str] = set()
    for action in actions:
        names = set(pnodes(action))
        extra = 1 + len(names - touched)
        if current and len(current) + len(touched) + extra > budget:
            chunks.append(current)
            current, touched = [], set()
        current.append(action)
        touched |= names
    if current:
        chunks.append(current)
    return chunks


def charged(
    pnode: PNode,
    *,
    add: ResourceRequest | Sequence[ResourceRequest] | None = None,
    remove: ResourceRequest | Sequence[ResourceRequest] | None = None,
    gained: Sequence[Allocation] = (),
    lost: Sequence[Allocation] = (),
    bumps: int = 1,
) -> PNode:
    """A copy of `pnode` with `add` charged and `remove` released (each one request or
    several; the one capacity arithmetic, `api.resources.amounts`), its assignment set's version
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
    removing = [remove] if isinstance(remove, ResourceRequest) else list(remove or ())
    for request in removing:
        after = amounts.charged(after, amounts.of_request(request), -1)
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
