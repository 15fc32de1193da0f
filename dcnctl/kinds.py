"""Resource types as users name them, and how each is read from the server.

`get vnodes` lists Allocation resources: a VNode replica slot and where it runs is what a
user means by "a vnode" of a running network, so the two names are one type here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence

import grpc
import pydantic

from api import labels
from api.dcnr.v1 import common_pb2, job_pb2, network_pb2, pnode_pb2
from api.resources import KINDS, meta
from dcnctl import client as client_mod
from dcnctl import errors

Client = client_mod.Client


@dataclasses.dataclass(frozen=True)
class Kind:
    kind: str  # the resource's `kind`: "Network"
    plural: str  # "networks"
    aliases: tuple[str, ...]

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """kubectl's "networks.dcnr.io", used in NotFound messages."""
        return f"{self.plural}.{meta.GROUP}"

    def ref(self, name: str) -> str:
        """kubectl's "network.dcnr.io/NAME", what `-o name` and apply print."""
        return f"{self.singular}.{meta.GROUP}/{name}"

    def not_found(self, name: str) -> errors.ServerError:
        return errors.ServerError(grpc.StatusCode.NOT_FOUND, f'{self.qualified} "{name}" not found')


NETWORK = Kind("Network", "networks", ("networks", "network", "net", "nets"))
PNODE = Kind("PNode", "pnodes", ("pnodes", "pnode", "pn"))
ALLOCATION = Kind(
    "Allocation", "allocations", ("vnodes", "vnode", "vn", "allocations", "allocation", "alloc")
)
JOB = Kind("Job", "jobs", ("jobs", "job"))
ALL = (NETWORK, PNODE, ALLOCATION, JOB)
_BY_ALIAS = {alias: k for k in ALL for alias in (*k.aliases, f"{k.singular}.{meta.GROUP}",
                                                   f"{k.plural}.{meta.GROUP}")}  # fmt: skip


def lookup(name: str, *, allowed: Sequence[Kind] = ALL) -> Kind:
    found = _BY_ALIAS.get(name.lower())
    if found is None or found not in allowed:
        if found is None:
            raise errors.local(f'the server doesn\'t have a resource type "{name}"')
        raise errors.local(f'this command does not take resource type "{name}"')
    return found


def decode(doc: common_pb2.ResourceDocument) -> meta.Resource:
    """A resource model from the server's document; a document this client cannot read
    (a newer server's) is an error naming the kind, not a traceback."""
    model = KINDS.get(doc.kind)
    if model is None:
        raise errors.local(f"the server sent a document of unknown kind {doc.kind!r}")
    try:
        return model.model_validate(json.loads(doc.json))
    except (ValueError, pydantic.ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise errors.local(f"cannot read the server's {doc.kind} document: {first}") from None


# -- reading ---------------------------------------------------------------------------------


def get(c: Client, kind: Kind, name: str) -> meta.Resource:
    if kind is NETWORK:
        doc = _named(c, kind, name, lambda: c.call(
            c.networks.GetNetwork, network_pb2.GetNetworkRequest(header=c.header(), name=name)
        ).document)  # fmt: skip
    elif kind is PNODE:
        doc = _named(c, kind, name, lambda: c.call(
            c.pnodes.GetPNode, pnode_pb2.GetPNodeRequest(header=c.header(), name=name)
        ).pnode)  # fmt: skip
    elif kind is JOB:
        doc = _named(c, kind, name, lambda: c.call(
            c.jobs.GetJob, job_pb2.GetJobRequest(header=c.header(), name=name)
        ).job)  # fmt: skip
    else:
        found = [a for a in list_all(c, kind) if a.name == name]
        if not found:
            raise kind.not_found(name)
        return found[0]
    return decode(doc)


def _named(
    c: Client, kind: Kind, name: str, fetch: Callable[[], common_pb2.ResourceDocument]
) -> common_pb2.ResourceDocument:
    try:
        return fetch()
    except errors.ServerError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            raise kind.not_found(name) from None
        raise


def list_all(
    c: Client, kind: Kind, *, selector: str = "", network: str = "", pnode: str = ""
) -> list[meta.Resource]:
    """Every page. Allocations carry no server-side selector, so it is applied here."""
    docs: list[common_pb2.ResourceDocument] = []
    token = ""
    while True:
        if kind is NETWORK:
            reply_n = c.call(c.networks.ListNetworks, network_pb2.ListNetworksRequest(
                header=c.header(), label_selector=selector, continue_token=token))  # fmt: skip
            docs += reply_n.items
            token = reply_n.continue_token
        elif kind is PNODE:
            reply_p = c.call(c.pnodes.ListPNodes, pnode_pb2.ListPNodesRequest(
                header=c.header(), label_selector=selector, continue_token=token))  # fmt: skip
            docs += reply_p.items
            token = reply_p.continue_token
        elif kind is JOB:
            reply_j = c.call(c.jobs.ListJobs, job_pb2.ListJobsRequest(
                header=c.header(), network=network, label_selector=selector,
                continue_token=token))  # fmt: skip
            docs += reply_j.items
            token = reply_j.continue_token
        else:
            reply_a = c.call(c.networks.ListAllocations, network_pb2.ListAllocationsRequest(
                header=c.header(), network=network, pnode=pnode,
                continue_token=token))  # fmt: skip
            docs += reply_a.items
            token = reply_a.continue_token
        if not token:
            break
    found = [decode(d) for d in docs]
    if kind is ALLOCATION and selector:
        try:
            parsed = labels.parse_selector(selector)
        except labels.SelectorError as exc:
            raise errors.local(f"-l {selector!r}: {exc}") from None
        found = [r for r in found if parsed.matches(r.metadata.labels)]
    return found
