"""The Job: a training or inference run over a network, with durable progress."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from api.resources.meta import Condition, DNSSubdomain, Model, Resource
from api.resources.network import DataRef

JobType = Literal["train", "infer"]
#: Most parts a step's batch may be cut into (the VNodes' bound: agent.vnode.MAX_MICRO_BATCHES).
MAX_MICRO_BATCHES = 64
Optimizer = Literal["sgd", "momentum", "adam"]


class JobSpec(Model):
    #: The Network the job runs over (in the same namespace, for a Job CR).
    network: DNSSubdomain
    #: train or infer.
    type: JobType = "train"
    #: Training data; unset: the data refs of the network's VNodes.
    data: DataRef | None = None
    #: Passes over the training data.
    epochs: int = Field(default=1, ge=1, le=100_000)
    #: Samples per step.
    batch_size: int = Field(default=32, ge=1, le=1_000_000)
    #: sgd, momentum or adam.
    optimizer: Optimizer = "sgd"
    learning_rate: float = Field(default=0.01, gt=0, le=10)
    #: Checkpoint every this many steps.
    checkpoint_interval: int = Field(default=50, ge=1)
    #: Seed of every random choice in the run (initialization, shuffling).
    seed: int = 0
    #: Cut each step's batch into this many equal parts, pipelined through the network
    #: (GPipe-style: gradients summed and applied once per step, so the weights equal an
    #: unpipelined run's to floating-point tolerance). 1: no pipelining. Must divide
    #: batch_size; an epoch's last, shorter batch is cut into the most parts, at most this
    #: many, that divide it.
    micro_batches: int = Field(default=1, ge=1, le=MAX_MICRO_BATCHES)

    @field_validator("micro_batches")
    @classmethod
    def _parts_divide_batch(cls, value: int, info: ValidationInfo) -> int:
        batch = info.data.get("batch_size")
        if isinstance(batch, int) and batch % value:
            raise ValueError(
                f"{value} does not divide batch_size {batch}; every micro-batch of a step "
                "must hold as many samples"
            )
        return value


JobPhase = Literal["Pending", "Running", "Paused", "Succeeded", "Failed", "Cancelled"]


class JobStatus(Model):
    phase: JobPhase = "Pending"
    step: int = 0
    epoch: int = 0
    total_steps: int = 0
    loss: float | None = None
    accuracy: float | None = None
    checkpoint_step: int = 0
    #: Allocation name → blob URL of each VNode's state at `checkpoint_step`.
    checkpoint_blobs: dict[str, str] = Field(default_factory=dict)
    #: Allocation name → the epoch of the VNode instance that holds `checkpoint_step`'s
    #: state; an instance of another epoch (the slot moved) must be restored before use.
    checkpoint_epochs: dict[str, int] = Field(default_factory=dict)
    #: Bumped whenever the run restarts from a checkpoint or its driver moves; VNodes refuse
    #: messages of older attempts.
    attempt: int = 0
    #: Attempts in a row that rolled back without recording a checkpoint (0 once one is):
    #: a run that keeps replaying the same steps. Its reason is the Progressing condition's.
    attempts_without_progress: int = 0
    #: The orchestrator replica driving the run.
    driver: str = ""
    samples_per_second: float | None = None
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)


class Job(Resource):
    KIND: ClassVar[str] = "Job"
    PLURAL: ClassVar[str] = "jobs"
    INDEXES: ClassVar[tuple[str, ...]] = ("network",)

    kind: Literal["Job"] = "Job"
    spec: JobSpec
    status: JobStatus = Field(default_factory=JobStatus)

    def index_values(self) -> dict[str, str | None]:
        return {"network": self.spec.network}


class TrainingLockSpec(Model):
    #: The training Job that holds the network; free again once that job is final or gone.
    job: DNSSubdomain


class TrainingLock(Resource):
    """Named like its network: which training Job may write the network's weights.

    One training run per network, because two runs would interleave their updates to the
    same VNodes' weights. Train creates a Job and this record's claim in one transaction
    (a conditional create of the lock, or a conditional update of a lock whose job has
    ended), so two Train calls racing on two orchestrator replicas cannot both succeed: the
    store's condition decides, not a read each replica made. Nobody releases it: a lock
    whose job is final or deleted is free, so a crashed writer never leaves a network
    locked. A record of its own rather than a field of the Network, whose status the
    network loop owns.
    """

    KIND: ClassVar[str] = "TrainingLock"
    PLURAL: ClassVar[str] = "traininglocks"

    kind: Literal["TrainingLock"] = "TrainingLock"
    spec: TrainingLockSpec
