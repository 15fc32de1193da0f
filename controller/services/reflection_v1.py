"""The `grpc.reflection.v1` service, beside the `v1alpha` one grpcio-reflection ships.

Current grpcurl-style tools ask `grpc.reflection.v1.ServerReflection` first; grpcio-reflection
1.85 serves only `grpc.reflection.v1alpha`, so they would see UNIMPLEMENTED. The two
protocols are the same messages under another package name (v1 was v1alpha promoted
unchanged), so they are identical on the wire: v1 is served here by v1alpha's own servicer,
on the v1 method path.

The v1 descriptor is derived from v1alpha's (package and type names renamed) and added to
the default descriptor pool, so reflection can describe the v1 service itself, as a tool
asks right after listing it.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

PACKAGE = "grpc.reflection.v1"
SERVICE_NAME = f"{PACKAGE}.ServerReflection"
METHOD = f"/{SERVICE_NAME}/ServerReflectionInfo"
FILE_NAME = "grpc/reflection/v1/reflection.proto"

_ALPHA = "grpc.reflection.v1alpha"


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto, renamed to what grpc/reflection/v1/reflection.proto is."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = FILE_NAME
    proto.package = PACKAGE
    proto.ClearField("options")  # v1alpha's java_package and the like
    alpha_type, v1_type = f".{_ALPHA}.", f".{PACKAGE}."
    for message in proto.message_type:
        for fld in message.field:
            if fld.type_name.startswith(alpha_type):
                fld.type_name = v1_type + fld.type_name.removeprefix(alpha_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = v1_type + method.input_type.removeprefix(alpha_type)
            method.output_type = v1_type + method.output_type.removeprefix(alpha_type)
    return proto


def _describe(pool: Any) -> None:
    """Add the v1 file to `pool` once (a second server in one process finds it there)."""
    try:
        pool.FindFileByName(FILE_NAME)
    except KeyError:
        pool.Add(file_descriptor())


def enable(service_names: list[str], server: aio.Server) -> None:
    """Serve reflection v1 and v1alpha on `server`, both listing `service_names` and
    each other."""
    _describe(descriptor_pool.Default())
    names = sorted({*service_names, reflection.SERVICE_NAME, SERVICE_NAME})
    reflection.enable_server_reflection(names, server)
    # `aio` is public (in the module's __all__), but the module ships no type hints.
    servicer = reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
