"""Fixtures every test package may use, and the order test files run in under xdist."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import moto

#: The test files that take longest, slowest first (seconds measured serially by
#: `--junitxml`, on 2 cores shared with other work: the order is what counts). Under xdist
#: (`make pytest`: loadfile, no reordering) a worker takes whole files in collection order,
#: so these start first and the short files fill in around them, instead of a long file
#: starting last and running alone while the other worker idles. Files not listed keep
#: their collection order.
SLOWEST_FIRST: tuple[str, ...] = (
    "tests/integration/test_soak_smoke.py",  # ~100 s (issue 16's chaos soak, 45 s of faults)
    "tests/integration/test_replica_livelock.py",  # ~30-80 s
    "tests/integration/test_store_stall.py",  # ~50 s
    "tests/integration/test_no_lost_assignments.py",  # ~20 s
    "tests/agent/test_agent_outlives_orchestrator.py",  # ~40 s
    "tests/sim/test_run.py",  # ~10 s
    "tests/dcnctl/test_local.py",  # 169 s
    "tests/integration/test_liars.py",  # ~130 s (the spot-check case adds ~10 s)
    "tests/integration/test_readme_tour.py",  # 92 s
    "tests/operator/test_operator.py",  # 79 s
    "tests/dcnctl/test_jobs.py",  # 77 s
    "tests/store/test_conformance.py",  # 74 s
    "tests/integration/test_training.py",  # 72 s
    "tests/dashboard/test_pages.py",  # ~35 s (chromium, four agents, a training run)
    "tests/store/test_uid_precondition.py",  # 60 s
    "tests/agent/test_agent_process.py",  # 50 s
    "tests/benchmarks/test_smoke.py",  # 49 s
    "tests/scheduler/test_properties.py",  # 40 s
    "tests/store/test_transactions.py",  # 39 s
    "tests/integration/test_orchestrator_restart.py",  # 35 s
    "tests/integration/test_two_replicas.py",  # 35 s
    "tests/store/test_feed.py",  # ~30 s (moto's streams; consumer child processes)
    "tests/store/test_dynamodb_specific.py",  # 33 s
    "tests/dcnctl/test_cluster.py",  # 29 s
    "tests/store/test_races.py",  # 25 s
    "tests/validation/test_result_flood.py",  # 23 s
    "tests/dcnctl/test_completion.py",  # 23 s
    "tests/integration/test_admission_flood.py",  # 23 s, mostly waiting for the GC
    "tests/store/test_sqlite_crash.py",  # 18 s
    "tests/integration/test_data_on_agents.py",  # 18 s
    "tests/deploy/test_chart.py",  # 17 s
    "tests/controller/test_serve_tls.py",  # 17 s
    "tests/integration/test_proto_only_client.py",  # 15 s
    "tests/dcnctl/test_events.py",  # 14 s
    "tests/integration/test_identity_renewal.py",  # 14 s
    "tests/dcnctl/test_credentials.py",  # 13 s
    "tests/integration/test_control_plane.py",  # 13 s
    "tests/controller/test_up.py",  # 11 s
    "tests/agent/test_dataplane_stream.py",  # ~11 s (peer processes; a 2 s delivery deadline)
    "tests/controller/test_serve.py",  # 10 s
    "tests/reconcilers/test_network_apply_groups.py",  # ~10 s (migrations on moto: ~7 s)
)


_RANK = {path: i for i, path in enumerate(SLOWEST_FIRST)}


def run_order(nodeid: str) -> int:
    """Where a test's file goes in a worker's collection: its place in SLOWEST_FIRST, else
    after all of them (a stable sort keeps the rest in pytest's order)."""
    return _RANK.get(nodeid.split("::", 1)[0], len(_RANK))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return  # one process: the order changes nothing, so keep pytest's
    items.sort(key=lambda item: run_order(item.nodeid))


@pytest.fixture(scope="session")
def aws_test_env() -> Iterator[None]:
    """Dummy AWS credentials and region for boto3, without touching the developer's own:
    env vars win over ~/.aws, the shared files point at nothing, and the instance metadata
    service (a slow timeout off EC2) is never asked."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        for name in (
            "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ):  # fmt: skip
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def moto_endpoint(aws_test_env: None) -> Iterator[str]:
    """One moto_server process for the whole session; tests isolate by table prefix."""
    with moto.MotoServer() as endpoint:
        yield endpoint


@pytest.fixture(scope="session", autouse=True)
def private_default_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Where our tools keep state when told nothing (`$XDG_STATE_HOME/dcnr` for the store,
    `up` and `dcnr-agent`; `$DCNR_CONFIG` else `~/.dcnr/config` for dcnctl) is this
    session's own directory: under `make pytest` two workers run at once, and a test that
    forgot `--state-dir` must neither meet the other worker's agent identity or store nor
    touch the developer's home."""
    root = tmp_path_factory.mktemp("default-paths")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(root / "state"))
        patch.setenv("DCNR_CONFIG", str(root / "dcnctl-config"))
        yield
