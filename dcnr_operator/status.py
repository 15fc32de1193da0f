"""Pure: what the CRs' spec and status become, from the orchestrator's documents.

The printer columns of the CRDs (api.crdgen.COLUMNS) read `ready`, `steps` and `epochs`,
written here in the form `dcnctl get` prints, so both show the same row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pydantic

from api.resources import job, meta, network

#: The label on an orchestrator Network naming the namespace of the CR it was applied from.
NAMESPACE_LABEL = "dcnr.io/k8s-namespace"


def network_document(name: str, namespace: str, spec: Mapping[str, Any]) -> bytes:
    """The JSON NetworkService.Apply takes for a CR: its name, a label naming its
    namespace, and its spec as written (the orchestrator validates it)."""
    doc = {
        "apiVersion": meta.API_VERSION,
        "kind": network.Network.KIND,
        "metadata": {"name": name, "labels": {NAMESPACE_LABEL: namespace}},
        "spec": dict(spec),
    }
    return json.dumps(doc).encode()


def normal_spec(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The spec as the orchestrator stores it (defaults filled, quantities canonical);
    None when it is invalid."""
    try:
        parsed = network.NetworkSpec.model_validate(dict(spec))
    except pydantic.ValidationError:
        return None
    return parsed.model_dump(mode="json", by_alias=True, exclude_none=True)


def spec_drifted(cr_spec: Mapping[str, Any], stored: network.Network) -> bool:
    """Whether the orchestrator's spec is not what the CR asks for."""
    wanted = normal_spec(cr_spec)
    have = stored.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return wanted is None or wanted != have


def network_status(net: network.Network) -> dict[str, Any]:
    s = net.status
    return {
        **s.model_dump(mode="json", by_alias=True, exclude_none=True),
        "ready": f"{s.ready_slots}/{s.desired_slots}",
        "vnodes": len(net.spec.vnodes),
        "orchestratorGeneration": net.metadata.generation,
        "message": "",
    }


def job_status(run: job.Job) -> dict[str, Any]:
    s = run.status
    return {
        "phase": s.phase,
        "step": s.step,
        "epoch": s.epoch,
        "totalSteps": s.total_steps,
        "loss": s.loss,
        "accuracy": s.accuracy,
        "message": s.message,
        "conditions": [c.model_dump(mode="json", by_alias=True) for c in s.conditions],
        "steps": f"{s.step}/{s.total_steps or '?'}",
        "epochs": f"{s.epoch}/{run.spec.epochs}",
        "jobName": run.name,
    }


FINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
