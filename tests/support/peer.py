"""A data-plane peer in its own process, for tests that signal it (SIGSTOP, SIGKILL): the
agent's real `agent.dataplane.DataPlane` behind a mutual-TLS listener, with the identity of
PNode NAME issued by the CA the test wrote into DIR (`identities.ca_flags`), hosting one
VNode: `act` (relu) of network `net` at epoch 1, whose parent `fc` is hosted by PNode
`sender` at epoch 1 (resolution answers that from a table here) and whose outputs are
dropped. Test-only; nothing here ships.

    python -m tests.support.peer DIR NAME

prints `peer serving on HOST:PORT` and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
from pathlib import Path

import numpy as np
from grpc import aio

from agent import blobs, dataplane, keys
from api import identity
from api.dcnr.v1 import pnode_pb2, resolve_pb2, vnode_pb2

NETWORK, TARGET, PARENT, SENDER, EPOCH = "net", "act", "fc", "sender", 1


class _Resolution:
    """What the data plane needs of `agent.peers.Peers`: fc is SENDER's; sends dropped."""

    async def send_forward(
        self, request: vnode_pb2.ForwardRequest, array: np.ndarray | None = None
    ) -> bool:
        return True

    async def send_backward(
        self, request: vnode_pb2.BackwardRequest, array: np.ndarray | None = None
    ) -> bool:
        return True

    async def resolve(
        self, network: str, vnode: str, replica: int, *, min_epoch: int = 0
    ) -> resolve_pb2.Endpoint | None:
        if (network, vnode, replica) != (NETWORK, PARENT, 0):
            return None
        return resolve_pb2.Endpoint(pnode_id=SENDER, replica=0, epoch=EPOCH)


async def serve(directory: Path, name: str) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = identity.Authority.from_pem(
        (directory / "identity-ca.pem").read_bytes(),
        (directory / "identity-ca-key.pem").read_bytes(),
    )
    keeper = keys.Keeper()
    keeper.accept(
        ca.issue_pnode(keeper.csr(name), name, now, dt.timedelta(hours=1)), ca.certificate_pem
    )
    plane = dataplane.DataPlane(
        sender=_Resolution(),
        keeper=keeper,
        blob_store=blobs.BlobStore(workdir=directory),
        kind_factory=dataplane.runtime_kinds(workdir=directory, cache_dir=None, datasets={}),
    )
    plane.reconcile([
        pnode_pb2.Assignment(
            network=NETWORK, vnode=TARGET, replica=0, epoch=EPOCH, kind="relu",
            inputs=[PARENT], outputs=["out"], allocation=f"{NETWORK}.{TARGET}.0",
            neighbour_kinds={PARENT: "dense"}, neighbour_params_json={PARENT: b'{"units": 4}'},
        )
    ])  # fmt: skip
    server = aio.server()
    plane.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", keeper.server_credentials())
    await server.start()
    print(f"peer serving on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    await plane.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.peer")
    parser.add_argument("directory", type=Path)
    parser.add_argument("name")
    args = parser.parse_args()
    asyncio.run(serve(args.directory, args.name))


if __name__ == "__main__":
    main()
