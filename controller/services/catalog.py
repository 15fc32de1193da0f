"""Every dcnr.v1 service the contract declares, registered on one server.

Services not implemented yet are registered from their generated base servicers, so they
answer UNIMPLEMENTED rather than being absent; health checking and reflection (both
`grpc.reflection.v1` and `v1alpha`, see `reflection_v1`) list them all.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

import api.dcnr.v1
from controller.services import reflection_v1

#: add_*Servicer_to_server(servicer, server), as generated.
Add = Callable[[Any, Any], None]


def generated() -> list[tuple[str, Add, Any]]:
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


def register(
    server: aio.Server, implemented: Mapping[str, tuple[Add, Any]], *, health: Any
) -> list[str]:
    """Add every dcnr.v1 service to `server` (`implemented`: full name → (add, servicer)),
    then `health` and reflection (v1 and v1alpha); returns the dcnr.v1 names, sorted."""
    names = []
    for name, add, servicer in generated():
        add_impl, impl = implemented.get(name, (add, servicer))
        add_impl(impl, server)
        names.append(name)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection_v1.enable(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server
    )
    return names
