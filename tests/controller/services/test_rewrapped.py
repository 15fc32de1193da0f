"""Interceptors wrap each method's handler once, not on every call (heartbeats and
resolutions go through both RpcTimer and DecodeGuard)."""

from __future__ import annotations

from typing import Any

import grpc

from controller.services import rpc_timer


def _handler() -> Any:
    async def behaviour(request: Any, context: Any) -> Any:
        return request

    return grpc.unary_unary_rpc_method_handler(behaviour)


def test_a_method_is_wrapped_once_while_its_handler_stays_the_same() -> None:
    built: list[str] = []

    def wrap(method: str, handler: Any) -> Any:
        built.append(method)
        return _handler()

    cache = rpc_timer.Rewrapped(wrap)
    inner = _handler()
    first = cache("/dcnr.v1.PNodeService/Heartbeat", inner)
    assert cache("/dcnr.v1.PNodeService/Heartbeat", inner) is first
    assert built == ["/dcnr.v1.PNodeService/Heartbeat"]
    # Another inner handler (another interceptor's per-call answer): wrapped afresh, and it
    # replaces the entry, so the cache never holds more than one per method.
    other = cache("/dcnr.v1.PNodeService/Heartbeat", _handler())
    assert other is not first
    assert built == ["/dcnr.v1.PNodeService/Heartbeat"] * 2
