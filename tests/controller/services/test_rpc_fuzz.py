"""Every dcnr.v1 method of a real `serve`, fed random requests: structured (random values in
every field of the request type) and raw (random bytes, truncated and corrupted encodings,
invalid UTF-8, nesting past protobuf's limit). Seeded, so a failure replays.

Whatever comes in, the answer is never UNKNOWN or INTERNAL, its message is one line of at
most `api.messages.MAX_LINE_CHARS`, the log holds no traceback and no ERROR, and every call
is in `dcnr_rpc_duration_seconds` (undecodable ones under INVALID_ARGUMENT).

Methods are enumerated from the descriptors at run time, so a new RPC is fuzzed too.
Deliver, the one request stream, answers each message in its DeliverResponse rather than a
status: it is fuzzed message by message on one stream, with the same expectations.
VNodeService requests are signed by a PNode identity of the server's CA, so the fuzz gets
past the signature check (docs/security.md) to the parsing behind it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, descriptor_pool, message_factory

from api import identity, messages
from api.dcnr.v1 import vnode_pb2
from controller.services import catalog
from tests.support import identities, metrics, procs, wait

pytestmark = pytest.mark.slow

SEED = 20261207
STRUCTURED_PER_METHOD = 8
RAW_PER_METHOD = 6
UNCLEAR = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
#: Signs every VNodeService request (`call`).
_SIGNER = identities.pnode_signer("fuzzer")

_FD = descriptor.FieldDescriptor
_STRINGS = ["", "x", "digits", "digits\n", "a" * 300, "é中", "../../etc", "-1", "\x00", "%s%n"]
_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]


#: Methods answering per message on a request stream (`test_deliver_...` below).
STREAMED = {"/dcnr.v1.VNodeService/Deliver"}


def methods() -> list[descriptor.MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [
        method
        for full_name, _add, _servicer in catalog.generated()
        for method in pool.FindServiceByName(full_name).methods
        if f"/{full_name}/{method.name}" not in STREAMED
    ]


def _scalar(field: descriptor.FieldDescriptor, rng: random.Random) -> Any:
    kind = field.type
    if kind == _FD.TYPE_STRING:
        return rng.choice(_STRINGS)
    if kind == _FD.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 8, 100]))
    if kind == _FD.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE):
        return rng.choice([0.0, -1.0, 1e30, float("nan"), float("inf"), 0.5])
    if kind == _FD.TYPE_ENUM:
        assert field.enum_type is not None
        return rng.choice([v.number for v in field.enum_type.values] + [99])
    unsigned = kind in (_FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_FIXED32, _FD.TYPE_FIXED64)
    bits = 32 if kind in (_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32) else 64
    value = rng.choice(_INTS)
    if unsigned:
        return abs(value) % (2 ** (32 if kind in (_FD.TYPE_UINT32, _FD.TYPE_FIXED32) else 64))
    return max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, value))


def fill(msg: Any, rng: random.Random, depth: int = 0) -> None:
    """Random values in a random subset of `msg`'s fields, recursively (bounded)."""
    for field in msg.DESCRIPTOR.fields:
        if rng.random() < 0.4 or (depth > 3 and field.type == _FD.TYPE_MESSAGE):
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            entry = field.message_type.fields_by_name
            key_f, value_f = entry["key"], entry["value"]
            target = getattr(msg, field.name)
            for _ in range(rng.randint(0, 3)):
                key = _scalar(key_f, rng)
                if value_f.type == _FD.TYPE_MESSAGE:
                    fill(target[key], rng, depth + 1)
                else:
                    target[key] = _scalar(value_f, rng)
        elif field.is_repeated:
            target = getattr(msg, field.name)
            for _ in range(rng.randint(0, 3)):
                if field.type == _FD.TYPE_MESSAGE:
                    fill(target.add(), rng, depth + 1)
                else:
                    target.append(_scalar(field, rng))
        elif field.type == _FD.TYPE_MESSAGE:
            fill(getattr(msg, field.name), rng, depth + 1)
            getattr(msg, field.name).SetInParent()
        else:
            setattr(msg, field.name, _scalar(field, rng))


def structured(method: descriptor.MethodDescriptor, rng: random.Random) -> bytes:
    msg = message_factory.GetMessageClass(method.input_type)()
    fill(msg, rng)
    return bytes(msg.SerializeToString())


def raw(method: descriptor.MethodDescriptor, rng: random.Random, case: int) -> bytes:
    """Bytes that are no valid request: each case one way an encoding goes wrong."""
    good = structured(method, rng) or b"\x0a\x00"
    if case == 0:
        return rng.randbytes(rng.randint(1, 64))
    if case == 1:
        return good[: max(1, len(good) // 2)] + b"\x0a\xff\xff"  # a length past the end
    if case == 2:
        return b"\x0a\x03\x0a\x01\xff"  # header.api_version, not UTF-8
    if case == 3:
        return b"\x0a\x7f" * 200  # 200 nested length-delimited fields, each too long
    if case == 4:
        nested = b""
        for _ in range(200):  # past protobuf's recursion limit of 100
            nested = b"\x0a" + _varint(len(nested)) + nested
        return nested
    return b"\xff" * rng.randint(1, 16)  # an invalid tag


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def call(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, body: bytes
) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    ident = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    signature: tuple[tuple[str, bytes], ...] = ()
    if method.containing_service.full_name == "dcnr.v1.VNodeService":
        signature = _SIGNER.metadata(path, body)
    try:
        if method.server_streaming:
            stream: Any = channel.unary_stream(path, **ident)(
                body, timeout=10, metadata=signature
            )
            try:
                next(iter(stream))  # the first answer tells; a watch would go on
            except StopIteration:
                pass
            finally:
                stream.cancel()
            return grpc.StatusCode.OK
        channel.unary_unary(path, **ident)(body, timeout=10, metadata=signature)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK  # our own cancel after the first message
        details = exc.details() or ""
        assert "\n" not in details, (path, details)
        assert len(details) <= messages.MAX_LINE_CHARS, (path, len(details))
        assert code not in UNCLEAR, (path, body[:40], code, details)
        return code


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[procs.Served]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with procs.orchestrator(
        f"sqlite:///{tmp / 'state.db'}",
        extra=["--metrics-listen", "127.0.0.1:0", *identities.ca_flags(tmp)],
    ) as served:
        yield served


def test_there_are_methods_to_fuzz() -> None:
    assert len(methods()) >= 30


def test_structured_and_raw_requests_get_clear_answers_and_a_clean_log(served) -> None:
    rng = random.Random(SEED)
    undecodable: dict[str, int] = {}
    with grpc.insecure_channel(served.address) as channel:
        for method in methods():
            for _ in range(STRUCTURED_PER_METHOD):
                call(channel, method, structured(method, rng))
            for case in range(RAW_PER_METHOD):
                code = call(channel, method, raw(method, rng, case))
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    name = f"/{method.containing_service.full_name}/{method.name}"
                    undecodable[name] = undecodable.get(name, 0) + 1
    log = served.log.read_text(errors="replace")
    loud = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
    assert not loud, "\n".join(loud[:5])
    # Every method refused at least its undecodable inputs, and they were all timed.
    assert len(undecodable) == len(methods())
    assert served.metrics_port is not None
    port = served.metrics_port

    def refused_counts() -> dict[str, float]:
        return {
            dict(labels)["method"]: value
            for (name, labels), value in metrics.scrape(port).items()
            if name == "dcnr_rpc_duration_seconds_count"
            and dict(labels)["code"] == "INVALID_ARGUMENT"
        }

    # grpc.aio's abort sends the status before the timer's `finally` records it, so the
    # last refusal can reach us a moment before its sample does: wait for the counts.
    wait.until_sync(
        refused_counts,
        within=10,
        what="every undecodable request timed under INVALID_ARGUMENT",
        accept=lambda counts: all(counts.get(n, 0) >= r for n, r in undecodable.items()),
        every=0.05,
    )
    samples = metrics.scrape(port)
    codes = {
        dict(labels)["code"]
        for (name, labels) in samples
        if name.startswith("dcnr_rpc_duration")
    }
    assert not codes & {"UNKNOWN", "INTERNAL"}


def test_deliver_answers_every_message_clearly_and_leaves_a_clean_log(served) -> None:
    """Raw and structured DeliverRequests, and structured Forward and Backward bodies signed
    as a PNode signs them, on one stream: each answered, in order, with a code that is not
    UNKNOWN or INTERNAL and one bounded line; the stream itself ends OK."""
    pool = descriptor_pool.Default()
    service = pool.FindServiceByName("dcnr.v1.VNodeService")
    deliver = service.methods_by_name["Deliver"]
    rng = random.Random(SEED)
    bodies = [raw(deliver, rng, case) for case in range(RAW_PER_METHOD)]
    bodies += [structured(deliver, rng) for _ in range(STRUCTURED_PER_METHOD)]
    for name in ("Forward", "Backward"):
        for _ in range(STRUCTURED_PER_METHOD):
            body = structured(service.methods_by_name[name], rng)
            entries = dict(_SIGNER.metadata(f"/dcnr.v1.VNodeService/{name}", body))
            request = vnode_pb2.DeliverRequest(
                signature=entries[identity.SIGNATURE_METADATA],
                certificate=entries[identity.CERTIFICATE_METADATA],
            )
            setattr(request, name.lower(), body)
            bodies.append(request.SerializeToString())
    with grpc.insecure_channel(served.address) as channel:
        stream = channel.stream_stream(
            "/dcnr.v1.VNodeService/Deliver",
            request_serializer=lambda b: b,
            response_deserializer=vnode_pb2.DeliverResponse.FromString,
        )
        answers = list(stream(iter(bodies), timeout=30))
    assert len(answers) == len(bodies), "every message answered, none ended the stream"
    codes = {code.value[0]: code for code in grpc.StatusCode}
    for body, answer in zip(bodies, answers, strict=True):
        assert codes[answer.code] not in UNCLEAR, (body[:40], answer)
        assert "\n" not in answer.message, answer.message
        assert len(answer.message) <= messages.MAX_LINE_CHARS, len(answer.message)
    assert codes[answers[0].code] == grpc.StatusCode.INVALID_ARGUMENT, "random bytes"
    log = served.log.read_text(errors="replace")
    loud = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
    assert not loud, "\n".join(loud[:5])


def test_an_undecodable_request_is_invalid_argument_naming_the_type(served) -> None:
    with grpc.insecure_channel(served.address) as channel:
        apply = channel.unary_unary(
            "/dcnr.v1.NetworkService/Apply",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as caught:
            apply(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(
        "request is not a valid dcnr.v1.ApplyRequest (3 bytes):"
    )


def test_a_100000_deep_json_document_is_invalid_argument_naming_the_limit(served) -> None:
    from api.dcnr.v1 import common_pb2, network_pb2, network_pb2_grpc

    deep = "[" * 100_000 + "]" * 100_000
    request = network_pb2.ApplyRequest(
        document=common_pb2.ResourceDocument(kind="Network", json=deep.encode())
    )
    with grpc.insecure_channel(served.address) as channel, pytest.raises(grpc.RpcError) as caught:
        network_pb2_grpc.NetworkServiceStub(channel).Apply(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested more than 64 levels deep" in (caught.value.details() or "")


def test_reflection_v1_lists_and_describes_the_services(served) -> None:
    """What grpcurl-style tools ask first: grpc.reflection.v1, not v1alpha."""
    from controller.services import reflection_v1

    pool = descriptor_pool.DescriptorPool()
    pool.Add(reflection_v1.file_descriptor())
    request_type: Any = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    response_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    with grpc.insecure_channel(served.address) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        listed, described = info(
            iter(
                [
                    request_type(list_services=""),
                    request_type(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
                ]
            ),
            timeout=10,
        )
    names = {s.name for s in listed.list_services_response.service}
    assert {"dcnr.v1.NetworkService", "grpc.reflection.v1.ServerReflection"} <= names
    assert "grpc.reflection.v1alpha.ServerReflection" in names
    assert described.WhichOneof("message_response") == "file_descriptor_response"


def test_fuzz_inputs_are_deterministic() -> None:
    first = [structured(m, random.Random(SEED)) for m in methods()]
    again = [structured(m, random.Random(SEED)) for m in methods()]
    assert first == again
