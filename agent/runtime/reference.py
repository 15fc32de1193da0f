"""The whole Network in one process, with the same kinds, as the yardstick of the distributed run.

It does exactly what the data plane does, in an order the data plane could have taken:
forward in topological order (ties broken by spec order); backward in reverse, each VNode
summing its children's gradients with `kinds.sum_gradients` (None for "no gradient"),
computing its input and parameter gradients with its pre-update parameters, then stepping
its own optimizer. Sinks start backward with no gradient: a loss differentiates its own mean
loss, anything else sends "no gradient" to its parents. Parameters are initialized lazily,
right before a VNode's first forward, from `state.initial_rng(network, vnode, seed)` and the
shapes of that forward's inputs — as the agent does when it has no state to restore.

Differences from a distributed run can then only come from floating-point summation order
(gradients of a parent with several children arriving in another order, which float64
accumulation makes negligible) or from bugs in the distributed run.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime import data as data_module
from agent.runtime import kinds, optim, state
from api.resources import network as network_model


def topological_order(network: network_model.Network) -> list[str]:
    specs = network.spec.vnodes
    position = {v.name: i for i, v in enumerate(specs)}
    waiting = {v.name: len(set(v.inputs)) for v in specs}
    children: dict[str, list[str]] = {v.name: [] for v in specs}
    for v in specs:
        for parent in dict.fromkeys(v.inputs):
            if parent not in children:
                raise ValueError(
                    f"spec.vnodes[{position[v.name]}].inputs: unknown vnode {parent!r}"
                )
            children[parent].append(v.name)
    ready = [position[name] for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = specs[heapq.heappop(ready)].name
        order.append(name)
        for child in children[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, position[child])
    if len(order) != len(specs):
        stuck = sorted(set(position) - set(order), key=position.__getitem__)
        raise ValueError(f"spec.vnodes: the graph has a cycle through {stuck}")
    return order


def batches(seed: int, epoch: int, count: int, batch_size: int) -> list[np.ndarray]:
    """One epoch's batches of row indices: a permutation seeded by (seed, epoch), cut into
    slices of `batch_size` (the last may be shorter). The job driver must use the same rule
    for a distributed run to be comparable with this one."""
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    order = np.random.default_rng([seed, epoch]).permutation(count).astype(np.int64)
    return [order[i : i + batch_size] for i in range(0, count, batch_size)]


class Reference:
    def __init__(
        self,
        network: network_model.Network,
        *,
        seed: int,
        optimizer: str,
        learning_rate: float,
        workdir: Path,
        cache_dir: Path | None = None,
    ) -> None:
        self.network = network
        self.seed = seed
        self.optimizer_name = optimizer
        self.learning_rate = learning_rate
        optim.make_optimizer(optimizer, learning_rate)  # refuse a bad name or rate now
        self.order = topological_order(network)
        self.specs = {v.name: v for v in network.spec.vnodes}
        #: (child, input position) pairs per parent, in spec order of the children.
        self.edges: dict[str, list[tuple[str, int]]] = {name: [] for name in self.specs}
        for v in network.spec.vnodes:
            for i, parent in enumerate(v.inputs):
                self.edges[parent].append((v.name, i))
        self.sources = [n for n in self.order if not self.specs[n].inputs]
        self.sinks = [n for n in self.order if not self.edges[n]]
        sources: dict[str, data_module.DataSource] = {}
        self.kinds: dict[str, kinds.Kind] = {}
        for name, spec in self.specs.items():
            source = None
            if spec.data is not None:
                url = spec.data.url
                source = sources.setdefault(
                    url, data_module.DataSource(url, workdir=workdir, cache_dir=cache_dir)
                )
            kind = kinds.kind_class(spec.kind)(spec.params, data=source)
            kind.check_input_count(len(spec.inputs) or 1)  # a source's one input: the feed
            self.kinds[name] = kind
        self.params: dict[str, dict[str, np.ndarray]] = {}
        self.optimizers: dict[str, optim.Optimizer] = {}
        self.init()

    def init(self) -> None:
        """Back to the start: parameters are (re)initialized at the next forward, and every
        optimizer forgets its slots."""
        self.params = {}
        self.optimizers = {
            name: optim.make_optimizer(self.optimizer_name, self.learning_rate)
            for name in self.specs
        }

    def _forward(
        self, feeds: Mapping[str, np.ndarray], *, training: bool
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        outputs: dict[str, np.ndarray] = {}
        caches: dict[str, Any] = {}
        for name in self.order:
            spec = self.specs[name]
            inputs = [outputs[p] for p in spec.inputs] if spec.inputs else [feeds[name]]
            if name not in self.params:
                rng = state.initial_rng(self.network.metadata.name, name, self.seed)
                self.params[name] = self.kinds[name].init_params(rng, [x.shape for x in inputs])
            outputs[name], caches[name] = self.kinds[name].forward(
                inputs, self.params[name], training=training
            )
        return outputs, caches

    def train_step(self, indices: np.ndarray) -> tuple[float, float]:
        """One synchronous step on the batch `indices` (sent to every source); returns the
        mean loss and accuracy over the loss sinks (NaN where there are none)."""
        indices = np.asarray(indices, dtype=np.int64)
        outputs, caches = self._forward(dict.fromkeys(self.sources, indices), training=True)
        received: dict[tuple[str, str, int], np.ndarray | None] = {}
        for name in reversed(self.order):
            spec = self.specs[name]
            grad = kinds.sum_gradients([received[(name, c, i)] for c, i in self.edges[name]])
            kind, params = self.kinds[name], self.params[name]
            input_grads, param_grads = kind.backward(grad, caches[name], params)
            if param_grads:
                self.optimizers[name].step(params, param_grads)
            for i, parent in enumerate(spec.inputs):
                received[(parent, name, i)] = input_grads[i]
        losses = [outputs[n] for n in self.sinks if self.kinds[n].is_loss]
        return _mean([float(o[0]) for o in losses]), _mean([float(o[1]) for o in losses])

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Sink outputs for the given source tensors; a source not given gets an empty tensor."""
        unknown = sorted(set(inputs) - set(self.sources))
        if unknown:
            raise ValueError(f"inputs: {unknown[0]!r} is not a source; sources: {self.sources}")
        empty = np.zeros((0,), dtype=np.float32)
        feeds = {s: np.asarray(inputs.get(s, empty)) for s in self.sources}
        outputs, _ = self._forward(feeds, training=False)
        return {name: outputs[name] for name in self.sinks}


def _mean(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan
