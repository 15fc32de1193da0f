"""The gRPC shim: one grpc.aio server carrying dcnr.v1, health checking and reflection.

Every dcnr.v1 service is registered from its generated base servicer, so an RPC that no
issue has implemented yet answers UNIMPLEMENTED rather than being absent; implemented
services replace those bases as they arrive.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import api.dcnr.v1
import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from store import base

log = logging.getLogger("dcnr.server")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    store_url: str
    listen: str = "127.0.0.1:7070"
    grace_seconds: float = 10.0


def _generated_services() -> list[tuple[str, Callable[[Any, Any], None], Any]]:
    """(full service name, add_*_to_server, base servicer) for every dcnr.v1 service."""
    found = []
    for info in pkgutil.iter_modules(api.dcnr.v1.__path__):
        if not info.name.endswith("_pb2_grpc"):
            continue
        grpc_module = importlib.import_module(f"api.dcnr.v1.{info.name}")
        pb2 = importlib.import_module(f"api.dcnr.v1.{info.name.removesuffix('_grpc')}")
        for service in pb2.DESCRIPTOR.services_by_name.values():
            add = getattr(grpc_module, f"add_{service.name}Servicer_to_server")
            servicer = getattr(grpc_module, f"{service.name}Servicer")()
            found.append((service.full_name, add, servicer))
    return sorted(found, key=lambda item: item[0])


class Orchestrator:
    """A running server; `start` binds, `stop` drains in-flight calls then closes the store."""

    def __init__(self, config: ServeConfig, store: base.Store) -> None:
        self.config = config
        self.store = store
        # No SO_REUSEPORT: a second orchestrator on a taken port must fail, not share it.
        self.server = aio.server(options=[("grpc.so_reuseport", 0)])
        # grpc_health ships no stub for its aio module.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.port = 0
        self.service_names: list[str] = []

    async def start(self) -> None:
        for name, add, servicer in _generated_services():
            add(servicer, self.server)
            self.service_names.append(name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        try:
            self.port = self.server.add_insecure_port(self.config.listen)
        except RuntimeError as exc:
            raise OSError(f"--listen {self.config.listen}: cannot bind ({exc})") from None
        if self.port == 0:
            raise OSError(f"--listen {self.config.listen}: cannot bind")
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_seconds)
        await self.store.close()


async def serve(
    config: ServeConfig, *, on_ready: Callable[[Orchestrator], None] | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    from store import url

    store = await url.open_store(config.store_url)
    orchestrator = Orchestrator(config, store)
    try:
        await orchestrator.start()
    except BaseException:
        await store.close()
        raise
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info(
        "serving dcnr.v1",
        extra={
            "fields": {
                "listen": config.listen,
                "port": orchestrator.port,
                "store": config.store_url,
            }
        },
    )
    if on_ready is not None:
        on_ready(orchestrator)
    await stopping.wait()
    log.info("shutting down: draining in-flight calls")
    await orchestrator.stop()
    log.info("stopped")
