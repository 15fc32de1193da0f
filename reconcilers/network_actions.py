"""The network plan's vocabulary: its actions, the plan value, and the plan's knobs.

Plain frozen values, no logic beyond building the record an action writes: the pure
`reconcilers.network_plan` produces them, `reconcilers.network_apply` writes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeAlias

from api.resources import allocation as allocation_model
from api.resources import meta
from api.resources import network as network_model
from scheduler import config as scheduler_config
from scheduler import explain

Allocation = allocation_model.Allocation


@dataclasses.dataclass(frozen=True, slots=True)
class PlanConfig:
    scheduler: scheduler_config.Config = scheduler_config.DEFAULT
    #: Seconds until unschedulable slots are tried again (PNodes joining also trigger it).
    unschedulable_retry: float = 5.0

    def __post_init__(self) -> None:
        if not self.unschedulable_retry > 0:
            raise ValueError(
                f"network plan config: unschedulable_retry = {self.unschedulable_retry!r} "
                "is invalid; must be a positive number of seconds"
            )


DEFAULT_CONFIG = PlanConfig()


@dataclasses.dataclass(frozen=True, slots=True)
class Place:
    network: str
    slot: str
    vnode: str
    replica: int
    pnode: str
    epoch: int
    pnode_incarnation: int
    vnode_hash: str
    resources: network_model.ResourceRequest
    reason: str = "slot has no allocation"

    def record(self) -> Allocation:
        """The allocation to create. Its resources are a shallow copy of the spec's: the
        record only goes to the store, which writes a new one from it (a deep copy per
        placement was a tenth of a pass, issue 13)."""
        return Allocation(
            metadata=meta.ObjectMeta(name=self.slot),
            spec=allocation_model.AllocationSpec(
                network=self.network,
                vnode=self.vnode,
                replica=self.replica,
                pnode=self.pnode,
                epoch=self.epoch,
                pnode_incarnation=self.pnode_incarnation,
                vnode_hash=self.vnode_hash,
                resources=self.resources.model_copy(),
            ),
            status=allocation_model.AllocationStatus(phase="Pending", reason=self.reason),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Migrate:
    allocation: Allocation
    to_pnode: str
    new_epoch: int
    reason: str
    pnode_incarnation: int
    vnode_hash: str
    resources: network_model.ResourceRequest

    def record(self) -> Allocation:
        return _rewritten(self.allocation, self.to_pnode, self)


@dataclasses.dataclass(frozen=True, slots=True)
class Reissue:
    allocation: Allocation
    new_epoch: int
    reason: str
    pnode_incarnation: int
    vnode_hash: str
    resources: network_model.ResourceRequest

    def record(self) -> Allocation:
        return _rewritten(self.allocation, self.allocation.spec.pnode, self)


@dataclasses.dataclass(frozen=True, slots=True)
class Stop:
    allocation: Allocation
    reason: str
    #: Record the slot's epoch in the network's status, because the slot is still wanted
    #: (or may be again) and its next placement must not reuse an epoch.
    remember_epoch: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Keep:
    allocation: Allocation
    reason: str


Action: TypeAlias = Place | Migrate | Reissue | Stop | Keep


def _rewritten(old: Allocation, pnode: str, action: Migrate | Reissue) -> Allocation:
    """`old` moved or re-issued. Shallow copies with their changes, never a change to `old`
    (the view's record): the store writes a new record from this one. A deep copy of the
    allocation was most of a migration's cost in a re-convergence pass (issue 13)."""
    spec = old.spec.model_copy(
        update={
            "pnode": pnode,
            "epoch": action.new_epoch,
            "pnode_incarnation": action.pnode_incarnation,
            "vnode_hash": action.vnode_hash,
            "resources": action.resources.model_copy(),
        }
    )
    status = allocation_model.AllocationStatus(phase="Pending", reason=action.reason)
    metadata = old.metadata.model_copy()
    return old.model_copy(update={"metadata": metadata, "spec": spec, "status": status})


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkPlan:
    #: In apply order: stops, re-issues, migrations, placements (keeps anywhere, no-ops).
    actions: tuple[Action, ...]
    #: Slot -> why no PNode can take it (placements, and migrations that found no place).
    unschedulable: Mapping[str, explain.Unschedulable]
    status: network_model.NetworkStatus

    def of(self, kind: type[Action]) -> list[Action]:
        return [action for action in self.actions if isinstance(action, kind)]

    @property
    def writes(self) -> tuple[Action, ...]:
        return tuple(action for action in self.actions if not isinstance(action, Keep))
