"""The agent's WatchAssignments loop against a real PNodeService stand-in over a loopback
socket: a fenced stream while the agent is leaving (it registers nothing new) must not
become a tight reconnect loop. Before the fix the stream's FENCED message returned past
the reconnect pause, and a leaving agent re-opened the stream ~1,000 times a second."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from grpc import aio

from agent import agent as agent_mod
from agent import capacity, dataplane, keys, peers
from api.dcnr.v1 import pnode_pb2, pnode_pb2_grpc


class AlwaysFenced(pnode_pb2_grpc.PNodeServiceServicer):
    """Every watch gets one FENCED message, as a deregistered PNode's would."""

    def __init__(self) -> None:
        self.watches = 0

    async def WatchAssignments(
        self, request: pnode_pb2.WatchAssignmentsRequest, context: Any
    ) -> AsyncIterator[pnode_pb2.WatchAssignmentsResponse]:
        self.watches += 1
        yield pnode_pb2.WatchAssignmentsResponse(lease_state=pnode_pb2.LEASE_STATE_FENCED)


class NoVNodes:
    """The data plane as far as a fence needs it."""

    def drop_all(self) -> None:
        pass


async def test_a_fenced_watch_while_leaving_waits_before_it_watches_again(
    tmp_path: Path,
) -> None:
    service = AlwaysFenced()  # type: ignore[abstract]  # the other methods: UNIMPLEMENTED
    server = aio.server()
    pnode_pb2_grpc.add_PNodeServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    orchestrators = peers.Orchestrators([f"127.0.0.1:{port}"])
    agent = agent_mod.Agent(
        agent_mod.AgentConfig(
            name="p", advertise="127.0.0.1:1",
            capabilities=capacity.Capabilities(cpu_millis=1000, memory_bytes=2**30),
            state_dir=tmp_path,
        ),
        orchestrators=orchestrators,
        data_plane=cast(dataplane.DataPlane, NoVNodes()),
        keeper=keys.Keeper(),
    )  # fmt: skip
    paused: list[float] = []

    async def pause_for(seconds: float) -> None:
        paused.append(seconds)

    agent._pause_for = pause_for  # type: ignore[method-assign]
    agent.incarnation = 1
    agent._registered.set()  # as after Register
    agent.request_stop()  # leaving: a fence registers nothing new
    try:
        await agent._watch_once()
        await agent._watch_once()
    finally:
        await orchestrators.close()
        await server.stop(None)
    assert service.watches == 2
    assert paused == [agent_mod.WATCH_PACING, agent_mod.WATCH_PACING]
