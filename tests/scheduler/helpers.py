"""Small builders for scheduler tests: a roomy ready PNode and a modest request by default."""

from __future__ import annotations

from typing import Any

from scheduler import model

GiB = 2**30
MiB = 2**20


def node(name: str = "p1", **fields: Any) -> model.NodeView:
    defaults: dict[str, Any] = {"cpu_capacity": 4000, "memory_capacity": 8 * GiB}
    defaults.update(fields)
    return model.NodeView(name=name, **defaults)


def request(vnode: str = "v", replica: int = 0, **fields: Any) -> model.Request:
    defaults: dict[str, Any] = {"network": "net", "cpu": 500, "memory": 512 * MiB}
    defaults.update(fields)
    return model.Request(vnode=vnode, replica=replica, **defaults)
