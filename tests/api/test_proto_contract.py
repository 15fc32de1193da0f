"""The dcnr.v1 contract: generated code matches the .proto files, the .proto files follow the
evolution rules of common.proto, and every service is served over a real socket.

Until later work implements a service, a server with only the generated base servicers
answers UNIMPLEMENTED; the socket test pins that the wiring (service names, method paths,
serializers) works end to end before any implementation exists.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import descriptor, descriptor_pb2, message_factory

from api import codegen
from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc

#: Every service of the v1 API and the RPCs it must have; more may be added, none removed.
EXPECTED_SERVICES = {
    "PNodeService": {
        "Register",
        "Heartbeat",
        "WatchAssignments",
        "Deregister",
        "Cordon",
        "Uncordon",
        "Drain",
        "GetPNode",
        "ListPNodes",
    },
    "ResolutionService": {"Resolve", "BatchResolve", "WatchEndpoints"},
    "NetworkService": {
        "Apply",
        "GetNetwork",
        "ListNetworks",
        "DeleteNetwork",
        "WatchNetworks",
        "ListAllocations",
        "ExplainPlacement",
        "ListEvents",
    },
    "JobService": {"Train", "Infer", "GetJob", "ListJobs", "WatchJob", "CancelJob", "DeleteJob"},
    "ValidationService": {"ReportResult"},
    "VNodeService": {"Forward", "Backward", "Checkpoint", "Restore", "DescribeData", "Deliver"},
}
SERVER_STREAMING = {"WatchAssignments", "WatchEndpoints", "WatchNetworks", "WatchJob", "Deliver"}
#: Streams requests too: STREAMED DELIVERY in vnode.proto (bidirectional).
CLIENT_STREAMING = {"Deliver"}


def _modules(suffix: str) -> list[ModuleType]:
    """The generated module of every .proto file, so a new file is linted without a test edit."""
    return [
        importlib.import_module("api." + name.removesuffix(".proto").replace("/", ".") + suffix)
        for name in codegen.proto_files()
    ]


FILES: list[descriptor.FileDescriptor] = [module.DESCRIPTOR for module in _modules("_pb2")]


def _services() -> Iterator[tuple[ModuleType, descriptor.ServiceDescriptor]]:
    for module, file in zip(_modules("_pb2_grpc"), FILES, strict=True):
        for service in file.services_by_name.values():
            yield module, service


def _methods() -> Iterator[descriptor.MethodDescriptor]:
    for _, service in _services():
        yield from service.methods


def _enums() -> Iterator[descriptor.EnumDescriptor]:
    def nested(message: descriptor.Descriptor) -> Iterator[descriptor.EnumDescriptor]:
        yield from message.enum_types
        for child in message.nested_types:
            yield from nested(child)

    for file in FILES:
        yield from file.enum_types_by_name.values()
        for message in file.message_types_by_name.values():
            yield from nested(message)


# --- generated code is what the .proto files produce ------------------------------------


@pytest.fixture(scope="module")
def generated() -> dict[str, bytes]:
    return codegen.generate()


def test_committed_generated_code_matches_the_proto_files(generated):
    drift = codegen.differences(generated, codegen.committed())
    assert not drift, "api/dcnr is out of date; run `make proto`:\n" + "\n".join(drift)


def test_generation_is_deterministic(generated):
    assert codegen.generate() == generated


def test_drift_is_reported_per_file(generated, tmp_path: Path):
    codegen.write(generated, tmp_path)
    assert codegen.differences(generated, codegen.committed(tmp_path)) == []

    (tmp_path / "v1" / "pnode_pb2.py").write_bytes(b"# edited by hand\n")
    (tmp_path / "v1" / "job_pb2.pyi").unlink()
    (tmp_path / "v1" / "old_pb2.py").write_bytes(b"")
    assert codegen.differences(generated, codegen.committed(tmp_path)) == [
        "missing: v1/job_pb2.pyi",
        "stale:   v1/old_pb2.py",
        "changed: v1/pnode_pb2.py",
    ]
    assert codegen.write(generated, tmp_path) == [
        "created: v1/job_pb2.pyi",
        "updated: v1/pnode_pb2.py",
        "removed: v1/old_pb2.py",
    ]
    assert codegen.committed(tmp_path) == generated


def test_generated_modules_import_our_package_not_a_top_level_dcnr(generated):
    for name, content in generated.items():
        assert not re.search(r"^\s*(from|import)\s+dcnr\b", content.decode(), re.M), name
    assert "from api.dcnr.v1 import common_pb2" in generated["v1/pnode_pb2.py"].decode()
    assert pnode_pb2.RegisterRequest.__module__ == "api.dcnr.v1.pnode_pb2"
    # The proto package inside the serialized descriptor is untouched.
    assert pnode_pb2.RegisterRequest.DESCRIPTOR.full_name == "dcnr.v1.RegisterRequest"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from dcnr.v1 import common_pb2 as c\n", "from api.dcnr.v1 import common_pb2 as c\n"),
        ("import dcnr.v1.common_pb2\n", "import api.dcnr.v1.common_pb2\n"),
        ("x: dcnr.v1.job_pb2_grpc.Stub\n", "x: api.dcnr.v1.job_pb2_grpc.Stub\n"),
        ("Build(D, 'dcnr.v1.job_pb2', g)\n", "Build(D, 'api.dcnr.v1.job_pb2', g)\n"),
        ("b'\\x07dcnr.v1\\x1a.dcnr.v1.Tensor'\n", "b'\\x07dcnr.v1\\x1a.dcnr.v1.Tensor'\n"),
        ("import api.dcnr.v1.common_pb2\n", "import api.dcnr.v1.common_pb2\n"),
    ],
)
def test_rewrite_imports(source, expected):
    assert codegen.rewrite_imports(source) == expected


def test_rewrite_refuses_an_import_form_it_does_not_know():
    with pytest.raises(codegen.CodegenError, match="unrewritten import"):
        codegen.rewrite_imports("import dcnr.v1 as v1\n")


# --- the evolution rules of common.proto -------------------------------------------------


def test_every_file_is_proto3_in_package_dcnr_v1():
    assert FILES, "no .proto files found"
    for file in FILES:
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        assert (proto.package, proto.syntax) == ("dcnr.v1", "proto3"), file.name


def test_every_service_has_the_expected_rpcs():
    found = {service.name: {m.name for m in service.methods} for _, service in _services()}
    missing = {
        name: sorted(methods - found.get(name, set()))
        for name, methods in EXPECTED_SERVICES.items()
        if methods - found.get(name, set())
    }
    assert not missing, f"services or RPCs missing: {missing}"


def test_watch_rpcs_stream_responses_and_only_deliver_streams_requests():
    for method in _methods():
        assert method.client_streaming == (method.name in CLIENT_STREAMING), method.full_name
        assert method.server_streaming == (method.name in SERVER_STREAMING), method.full_name


def test_every_request_starts_with_the_request_header():
    for method in _methods():
        header = method.input_type.fields_by_number.get(1)
        assert header is not None, f"{method.input_type.full_name} has no field 1"
        assert header.name == "header", method.input_type.full_name
        assert header.message_type is not None, method.input_type.full_name
        assert header.message_type.full_name == "dcnr.v1.RequestHeader"


def test_every_unary_response_starts_with_the_response_header():
    for method in _methods():
        if method.server_streaming:
            continue
        header = method.output_type.fields_by_number.get(1)
        assert header is not None, f"{method.output_type.full_name} has no field 1"
        assert header.name == "header", method.output_type.full_name
        assert header.message_type is not None, method.output_type.full_name
        assert header.message_type.full_name == "dcnr.v1.ResponseHeader"


def test_every_rpc_has_its_own_request_and_response_message():
    seen: set[str] = set()
    for method in _methods():
        names = (method.input_type.name, method.output_type.name)
        assert names == (f"{method.name}Request", f"{method.name}Response"), method.full_name
        assert not seen & set(names), f"{method.full_name} shares a message with another RPC"
        seen.update(names)


def test_every_enum_starts_with_unspecified_and_prefixes_its_values():
    enums = list(_enums())
    assert enums
    for enum in enums:
        prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum.name).lstrip("_")
        zero = enum.values_by_number.get(0)
        assert zero is not None, f"{enum.full_name} has no value 0"
        assert zero.name == f"{prefix}_UNSPECIFIED", enum.full_name
        for value in enum.values:
            assert value.name.startswith(prefix + "_"), f"{enum.full_name}.{value.name}"


def test_no_request_carries_a_credential():
    """Credentials travel in call metadata (`authorization: Bearer`), never in messages."""
    for method in _methods():
        for field in method.input_type.fields:
            words = set(field.name.split("_"))
            assert not words & {"credential", "secret", "password", "authorization"}, (
                f"{method.input_type.full_name}.{field.name}"
            )


# --- every service is reachable over a real socket ---------------------------------------


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """A server with only the generated base servicers, i.e. no implementation at all."""
    server = grpc.aio.server()
    for module, service in _services():
        servicer = getattr(module, f"{service.name}Servicer")()
        getattr(module, f"add_{service.name}Servicer_to_server")(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client:
            yield client
    finally:
        await server.stop(grace=None)


async def _status_of(call_rpc, method: descriptor.MethodDescriptor) -> grpc.StatusCode | None:
    request = message_factory.GetMessageClass(method.input_type)()
    try:
        if method.client_streaming:
            async for _ in call_rpc(iter([request]), timeout=10):
                pass
        elif method.server_streaming:
            async for _ in call_rpc(request, timeout=10):
                pass
        else:
            await call_rpc(request, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return None


async def test_every_rpc_of_every_service_answers_unimplemented(channel):
    codes = {}
    for module, service in _services():
        stub = getattr(module, f"{service.name}Stub")(channel)
        for method in service.methods:
            codes[method.full_name] = await _status_of(getattr(stub, method.name), method)
    assert set(codes) >= {f"dcnr.v1.{s}.{m}" for s, ms in EXPECTED_SERVICES.items() for m in ms}
    wrong = {name: code for name, code in codes.items() if code != grpc.StatusCode.UNIMPLEMENTED}
    assert not wrong, f"expected UNIMPLEMENTED from the base servicers, got {wrong}"


async def test_typed_register_call_reaches_the_server(channel):
    stub = pnode_pb2_grpc.PNodeServiceStub(channel)
    request = pnode_pb2.RegisterRequest(
        header=common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="test"),
        name="laptop-1",
        capacity=common_pb2.Capacity(cpu_millis=4000, memory_bytes=8 * 2**30),
        labels={"topology.dcnr.io/zone": "eu-west-1a"},
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Register(request, metadata=(("authorization", "Bearer not-a-secret"),))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
