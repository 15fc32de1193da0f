"""What only the DynamoDB backend has: tables and GSIs, Query not Scan, DynamoDB's limits,
retries that give up, tokens, and writes whose answer was lost. Against a real moto server.

Faults are injected through the real client's own event hooks (botocore's `before-call` and
`after-call`), not by replacing it: every request still crosses HTTP to the server.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from api import resources
from api.resources import allocation, job, network, pnode
from store import base, dynamodb, errors
from store import dynamodb_items as items
from tests.store import records
from tests.support import moto

FAST_FAILING = dynamodb.ClientOptions(
    attempts=3, backoff_first=0.001, backoff_max=0.002, connect_timeout=0.5, read_timeout=0.5
)


def _prefix() -> str:
    return f"d{uuid.uuid4().hex[:12]}"


async def _open(
    endpoint: str, prefix: str | None = None, options: dynamodb.ClientOptions | None = None
) -> dynamodb.DynamoStore:
    return await dynamodb.DynamoStore.open(
        prefix=prefix or _prefix(),
        region="us-east-1",
        endpoint=endpoint,
        options=options or dynamodb.ClientOptions(),
    )


@pytest.fixture
async def dyn(moto_endpoint: str) -> AsyncIterator[dynamodb.DynamoStore]:
    opened = await _open(moto_endpoint)
    await opened.init_tables()
    try:
        yield opened
    finally:
        await opened.close()


class Operations:
    """Names of the DynamoDB operations a client sends, seen by botocore's own hook."""

    def __init__(self, store: dynamodb.DynamoStore) -> None:
        self.names: list[str] = []
        store.client.meta.events.register("before-call.dynamodb", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.names.append(model.name)


def lose_next_answer(store: dynamodb.DynamoStore, operation: str) -> None:
    """The next `operation` is applied by the server, then its answer is lost in transit."""
    armed = [True]

    def drop(**_: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise botocore.exceptions.ReadTimeoutError(endpoint_url="injected by the test")

    store.client.meta.events.register(f"after-call.dynamodb.{operation}", drop)


def _padding(name: str, size: int) -> network.VNodeSpec:
    return network.VNodeSpec(name=name, kind="relu", inputs=["hidden"], params={"pad": "x" * size})


def big_network(name: str, size: int) -> network.Network:
    """A valid Network of about `size` bytes: VNode params carry it, 60 KiB each (params are
    bounded at 64 KiB per VNode, annotations at 256 KiB per record)."""
    record = records.network_record(name)
    chunk = 60 * 1024
    record.spec.vnodes += [
        _padding(f"pad{i}", min(chunk, size - start))
        for i, start in enumerate(range(0, size, chunk))
    ]
    return record


# -- tables ---------------------------------------------------------------------------------


async def test_init_tables_creates_each_kind_once_then_says_exists(moto_endpoint):
    prefix = _prefix()
    store = await _open(moto_endpoint, prefix)
    try:
        kinds = resources.KINDS.values()
        tables = [f"{prefix}-{kind.PLURAL}" for kind in kinds]
        # Kinds whose records expire get DynamoDB's TTL once, on the first run.
        assert await store.init_tables() == [
            f"created {prefix}-{kind.PLURAL}" + (" (added TTL on ttl)" if kind.EXPIRES else "")
            for kind in kinds
        ]
        assert await store.init_tables() == [f"exists {t}" for t in tables]
    finally:
        await store.close()


@pytest.mark.parametrize("kind", list(resources.KINDS.values()), ids=lambda k: k.KIND)
async def test_tables_have_the_documented_schema(dyn, kind):
    table = dyn.client.describe_table(TableName=dyn.table(kind))["Table"]
    assert table["KeySchema"] == [{"AttributeName": "name", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    gsis = {g["IndexName"]: g for g in table.get("GlobalSecondaryIndexes", [])}
    assert sorted(gsis) == sorted(f"by-{index}" for index in kind.INDEXES)
    for index in kind.INDEXES:
        gsi = gsis[f"by-{index}"]
        assert gsi["KeySchema"] == [
            {"AttributeName": f"ix_{index}", "KeyType": "HASH"},
            {"AttributeName": "name", "KeyType": "RANGE"},
        ]
        assert gsi["Projection"]["ProjectionType"] == "ALL"
    assert table["StreamSpecification"] == {
        "StreamEnabled": True,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    assert table["LatestStreamArn"]
    ttl = dyn.client.describe_time_to_live(TableName=dyn.table(kind))["TimeToLiveDescription"]
    if kind.EXPIRES:
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "ttl")
    else:
        assert ttl["TimeToLiveStatus"] == "DISABLED"


async def test_init_tables_adds_an_index_missing_from_an_older_table(moto_endpoint):
    prefix = _prefix()
    store = await _open(moto_endpoint, prefix)
    try:
        older = items.create_table_params(store.table(job.Job), job.Job)
        del older["GlobalSecondaryIndexes"]
        older["AttributeDefinitions"] = [{"AttributeName": "name", "AttributeType": "S"}]
        store.client.create_table(**older)
        lines = await store.init_tables()
        assert f"exists {prefix}-jobs (added by-network)" in lines
        await store.create(records.job_record("train-1", "mnist"))
        listed = await store.list(job.Job, index=("network", "mnist"))
        assert [j.name for j in listed.items] == ["train-1"]
    finally:
        await store.close()


async def test_init_tables_turns_on_the_stream_of_a_table_made_before_the_feed(moto_endpoint):
    prefix = _prefix()
    store = await _open(moto_endpoint, prefix)
    try:
        older = items.create_table_params(store.table(job.Job), job.Job)
        del older["StreamSpecification"]
        store.client.create_table(**older)
        with pytest.raises(errors.Unavailable, match=r"no stream.*init-store"):
            await store.feed_head([job.Job])
        lines = await store.init_tables()
        assert f"exists {prefix}-jobs (added stream NEW_AND_OLD_IMAGES)" in lines
        cursor = await store.feed_head([job.Job])
        await store.create(records.job_record("train-1", "mnist"))
        page = await store.changes(cursor)
        assert [(c.name, c.resource_version) for c in page.changes] == [("train-1", 1)]
    finally:
        await store.close()


async def test_a_stream_with_another_view_is_refused_and_says_what_to_do(moto_endpoint):
    prefix = _prefix()
    store = await _open(moto_endpoint, prefix)
    try:
        older = items.create_table_params(store.table(job.Job), job.Job)
        older["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"}
        store.client.create_table(**older)
        with pytest.raises(errors.InvalidRequest, match=r"KEYS_ONLY.*NEW_AND_OLD_IMAGES"):
            await store.init_tables()
    finally:
        await store.close()


async def test_a_foreign_table_under_our_name_is_refused(moto_endpoint):
    prefix = _prefix()
    store = await _open(moto_endpoint, prefix)
    try:
        store.client.create_table(
            TableName=f"{prefix}-networks",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        with pytest.raises(errors.InvalidRequest, match=f"{prefix}-networks exists with key"):
            await store.init_tables()
    finally:
        await store.close()


async def test_tables_not_initialized_is_unavailable_and_says_how_to_fix(moto_endpoint):
    store = await _open(moto_endpoint)
    try:
        with pytest.raises(errors.Unavailable, match="init-store") as caught:
            await store.get(job.Job, "train-1")
        # The command it suggests targets the same endpoint, not real AWS.
        assert f"&endpoint={moto_endpoint}'" in str(caught.value)
    finally:
        await store.close()


# -- reads ----------------------------------------------------------------------------------


async def test_list_by_index_queries_the_gsi_and_never_scans(dyn):
    for i in range(5):
        await dyn.create(records.allocation_record("mnist", "input", i, "p1" if i % 2 else "p2"))
    seen = Operations(dyn)
    listed = await base.list_all(dyn, allocation.Allocation, index=("pnode", "p2"))
    assert [a.spec.replica for a in listed] == [0, 2, 4]
    first = await dyn.list(allocation.Allocation, index=("network", "mnist"), limit=2)
    assert first.continue_token is not None
    await dyn.list(
        allocation.Allocation, index=("network", "mnist"), continue_token=first.continue_token
    )
    assert seen.names
    assert set(seen.names) == {"Query"}
    await dyn.list(allocation.Allocation)
    assert seen.names[-1] == "Scan"  # the hook does see a Scan when there is one


async def test_index_pages_are_in_name_order_and_tokens_round_trip(dyn):
    names = [f"j-{i:02d}" for i in (5, 1, 4, 0, 3, 2)]
    for name in names:
        await dyn.create(records.job_record(name, "mnist"))
    await dyn.create(records.job_record("other", "cifar"))
    seen: list[str] = []
    token: str | None = None
    for _ in range(len(names)):
        page = await dyn.list(job.Job, index=("network", "mnist"), limit=4, continue_token=token)
        seen += [j.name for j in page.items]
        token = page.continue_token
        if token is None:
            break
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        assert doc == {"k": "Job", "i": ["network", "mnist"], "a": seen[-1]}
    assert seen == sorted(names)
    assert token is None


async def test_an_empty_index_value_is_invalid(dyn):
    with pytest.raises(errors.InvalidRequest, match="index network"):
        await dyn.list(job.Job, index=("network", ""))


# -- DynamoDB's limits ----------------------------------------------------------------------


async def test_a_record_over_400_kb_is_invalid_and_not_written(dyn):
    with pytest.raises(errors.InvalidRequest, match=r"Network 'huge'.*400 KB") as raised:
        await dyn.create(big_network("huge", 410 * 1024))
    assert (raised.value.kind, raised.value.name) == ("Network", "huge")
    with pytest.raises(errors.NotFound):
        await dyn.get(network.Network, "huge")

    fits = await dyn.create(big_network("fits", 390 * 1024))
    fits.spec.vnodes.append(_padding("grown", 20 * 1024))
    with pytest.raises(errors.InvalidRequest, match="'fits'"):
        await dyn.update(fits)
    assert (await dyn.get(network.Network, "fits")).metadata.resource_version == 1


async def test_a_transaction_over_4_mb_is_invalid_before_it_is_sent(dyn):
    ops = [base.Create(big_network(f"n-{i}", 390 * 1024)) for i in range(11)]
    with pytest.raises(errors.InvalidRequest, match="4 MB"):
        await dyn.transact(ops)
    assert (await dyn.list(network.Network)).items == []


# -- failures of the service ----------------------------------------------------------------


@pytest.mark.usefixtures("aws_test_env")
async def test_a_closed_port_is_unavailable_after_bounded_retries():
    endpoint = f"http://127.0.0.1:{moto.free_port()}"
    store = await _open(endpoint, options=FAST_FAILING)
    seen = Operations(store)
    try:
        with pytest.raises(errors.Unavailable, match="gave up after 3 attempts"):
            await store.get(job.Job, "train-1")
        assert seen.names == ["GetItem"] * 3
    finally:
        await store.close()


async def test_no_credentials_is_unavailable_and_says_where_it_looked(monkeypatch, moto_endpoint):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = await _open(moto_endpoint)
    try:
        with pytest.raises(errors.Unavailable, match="no AWS credentials found"):
            await store.get(job.Job, "train-1")
    finally:
        await store.close()


async def test_a_create_whose_answer_was_lost_reports_success(dyn):
    lose_next_answer(dyn, "PutItem")
    created = await dyn.create(records.job_record("train-1"))
    assert created.metadata.resource_version == 1
    assert await dyn.get(job.Job, "train-1") == created


async def test_an_update_whose_answer_was_lost_reports_success_once(dyn):
    current = await dyn.create(records.job_record("train-1"))
    current.status.step = 7
    lose_next_answer(dyn, "PutItem")
    updated = await dyn.update(current)
    assert updated.metadata.resource_version == 2
    assert await dyn.get(job.Job, "train-1") == updated
    with pytest.raises(errors.Conflict):  # the same write sent again is stale, as it should be
        await dyn.update(current)


async def test_a_delete_whose_answer_was_lost_reports_success(dyn):
    await dyn.create(records.job_record("train-1"))
    lose_next_answer(dyn, "DeleteItem")
    await dyn.delete(job.Job, "train-1", resource_version=1)
    with pytest.raises(errors.NotFound):
        await dyn.get(job.Job, "train-1")


async def test_a_transaction_whose_answer_was_lost_reports_success(dyn):
    node = await dyn.create(records.pnode_record("p1"))
    gone = await dyn.create(records.job_record("old"))
    lose_next_answer(dyn, "TransactWriteItems")
    written = await dyn.transact(
        [
            base.Create(records.allocation_record("mnist", "input", 0, "p1")),
            base.Update(records.charged(node, records.MILLICPU_PER_SLOT)),
            base.Delete(job.Job, "old", resource_version=gone.metadata.resource_version),
        ]
    )
    assert written[1] is not None
    assert written[1].metadata.resource_version == 2
    assert await dyn.get(pnode.PNode, "p1") == written[1]
    assert await dyn.get(allocation.Allocation, "mnist.input.0") == written[0]
    with pytest.raises(errors.NotFound):
        await dyn.get(job.Job, "old")


async def test_a_create_of_a_taken_name_stays_already_exists_without_a_lost_answer(dyn):
    await dyn.create(records.pnode_record("p1"))
    with pytest.raises(errors.AlreadyExists):
        await dyn.create(records.pnode_record("p1"))


async def test_a_closed_store_refuses_calls(moto_endpoint):
    store = await _open(moto_endpoint)
    await store.close()
    with pytest.raises(errors.InvalidRequest, match="closed"):
        await store.get(pnode.PNode, "p1")


async def test_a_bad_table_prefix_is_invalid_and_names_what_is_allowed():
    with pytest.raises(errors.InvalidRequest, match=r"'dcnr/x'.*A-Z"):
        await dynamodb.DynamoStore.open(prefix="dcnr/x", region="us-east-1", endpoint=None)


_BACKUP_PROBE = """
import copy
from moto import mock_aws
import boto3
from tests.support import serial_moto
serial_moto.streams_follow_rollbacks()
with mock_aws():
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    client.put_item(TableName="t", Item={"k": {"S": "a"}})
    from moto.dynamodb.models import dynamodb_backends
    table = dynamodb_backends["123456789012"]["us-east-1"].tables["t"]
    backup = copy.deepcopy(table)
    print(backup is not table, backup.stream_shard is table.stream_shard)
"""


def test_the_moto_server_backs_up_a_table_without_copying_its_stream() -> None:
    """moto backs up every table a transaction touches with a deep copy; a copied stream
    shard made each transaction cost O(every record ever streamed), and a 15-minute soak
    slowed into store stalls (tests/support/serial_moto.py). The backup shares the shard."""
    root = Path(__file__).resolve().parents[2]
    probe = subprocess.run(
        [sys.executable, "-c", _BACKUP_PROBE], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["True", "True"]
