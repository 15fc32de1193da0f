"""The dashboard in a real browser: Debian's headless chromium driven by Selenium, against a
real `dcnr-orchestrator serve --ui-listen` with admin and read-only tokens and four real
`dcnr-agent` processes.

One cluster and one browser for the whole module (the tests run in order: the job's curve
before the agent is killed). The browser signs in once with the read-only token in the
URL; every page after that rides on the cookie. Each page is saved as a screenshot, in a
temporary directory unless DCNR_SCREENSHOTS names one (`make screenshots` refreshes
docs/screenshots/, shown in the README).

Chromium missing is a failure with the command that installs it, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpc import aio
from selenium import webdriver

from api.dcnr.v1 import job_pb2, job_pb2_grpc
from api.resources import allocation, meta
from api.resources import job as job_model
from controller import config as config_mod
from controller.dashboard import site
from controller.jobs import job_watch
from controller.runtime import clock as clocks
from controller.services import auth
from controller.state import view as view_mod
from store import sqlite
from tests.integration import cluster
from tests.support import agents, procs, wait
from tests.support import browser as chromium

pytestmark = pytest.mark.slow

ADMIN, READ_ONLY = "dashboard-admin-token", "dashboard-read-only-token"
#: Where the screenshots go: a temporary directory, unless DCNR_SCREENSHOTS names one
#: (`make screenshots` sets it to docs/screenshots, the README's): a test run leaves the
#: source tree as it found it.
SCREENSHOTS = Path(
    os.environ.get("DCNR_SCREENSHOTS") or tempfile.mkdtemp(prefix="dcnr-screenshots-")
)
DIGITS = yaml.safe_load((agents.REPO / "examples" / "digits" / "network.yaml").read_text())
#: A chain whose first two VNodes run two replicas each: six slots.
CHAIN = cluster.chain_network("chain", 4, replicated=2)
CHAIN_SLOTS = 6
#: Short leases, so the killed agent's VNodes move within seconds.
TIMINGS = ("--heartbeat-interval", "0.5", "--lease-duration", "3", "--lost-grace", "1")


class Cluster:
    def __init__(self, served: procs.Served, fleet: list[agents.Agent], root: Path) -> None:
        self.served = served
        self.fleet = fleet
        self.store_url = f"sqlite:///{root / 'state.db'}"
        self.ui = procs.dashboard_url(served).rstrip("/")


@pytest.fixture(scope="module")
def dashboard_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("dashboard")
    (root / "admin").write_text(ADMIN + "\n")
    (root / "read-only").write_text(READ_ONLY + "\n")
    with (
        procs.orchestrator(
            f"sqlite:///{root / 'state.db'}",
            extra=(
                "--ui-listen", "127.0.0.1:0",
                "--admin-token-file", str(root / "admin"),
                "--read-only-token-file", str(root / "read-only"),
                *TIMINGS,
            ),
            log=root / "orchestrator.log",
        ) as served,
        agents.agents(served.address, root, 4, cpu="2", memory="2Gi") as fleet,
    ):  # fmt: skip
        yield Cluster(served, fleet, root)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium.chromium() as chrome:
        yield chrome


@pytest.fixture(scope="module")
def signed_in(dashboard_cluster: Cluster, browser: webdriver.Chrome) -> webdriver.Chrome:
    """The browser after following a link with the read-only token in it once."""
    browser.get(f"{dashboard_cluster.ui}/?token={READ_ONLY}")
    wait.until_sync(
        lambda: browser.current_url, within=20, what="the redirect that drops the token",
        accept=lambda url: "token=" not in url,
    )  # fmt: skip
    return browser


def _open(browser: webdriver.Chrome, url: str) -> None:
    """Load a page and wait for its first pushed version to be drawn."""
    browser.get(url)
    wait.until_sync(
        lambda: browser.execute_script("return document.body.dataset.ready || ''"),
        within=30, what=f"{url} drawn",
    )  # fmt: skip


def _screenshot(browser: webdriver.Chrome, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _slots(browser: webdriver.Chrome) -> list[dict[str, Any]]:
    """The graph's nodes as cytoscape holds them (what it draws)."""
    nodes: list[dict[str, Any]] = browser.execute_script(
        "return window.dcnr.cy ? window.dcnr.cy.nodes().map(n => n.data()) : []"
    )
    return nodes


async def _allocations(c: Cluster, network: str) -> dict[str, allocation.Allocation]:
    _, allocations, _ = await cluster.read_state(c.store_url)
    return {f"{a.spec.vnode}#{a.spec.replica}": a for a in allocations if a.spec.network == network}


def test_a_request_without_the_token_is_refused(dashboard_cluster: Cluster) -> None:
    ui = dashboard_cluster.ui
    assert _status(f"{ui}/") == 401
    assert _status(f"{ui}/api/overview") == 401
    assert _status(f"{ui}/api/watch/overview") == 401
    assert _status(f"{ui}/networks/chain") == 401
    assert _status(f"{ui}/api/overview", {"Authorization": "Bearer not-a-token"}) == 401
    assert _status(f"{ui}/?token=not-a-token") == 401
    assert _status(f"{ui}/api/overview", {"Cookie": "dcnr_token=not-a-token"}) == 401
    # Both roles read it; the login form's page and the static files need no token.
    assert _status(f"{ui}/api/overview", {"Authorization": f"Bearer {READ_ONLY}"}) == 200
    assert _status(f"{ui}/api/overview", {"Authorization": f"Bearer {ADMIN}"}) == 200
    assert _status(f"{ui}/static/vendor.js") == 200


async def test_overview_lists_the_pnodes(
    dashboard_cluster: Cluster, signed_in: webdriver.Chrome
) -> None:
    api = cluster.Api(dashboard_cluster.served.address, token=ADMIN)
    try:
        await api.apply(DIGITS)
        await api.apply(CHAIN)
        await api.wait_resolvable("chain", {"v0": 2, "v1": 2, "v2": 1, "v3": 1}, within=60)
    finally:
        await api.close()
    browser = signed_in
    _open(browser, f"{dashboard_cluster.ui}/")
    names = {a.name for a in dashboard_cluster.fleet}
    shown = wait.until_sync(
        lambda: set(browser.execute_script(
            "return [...document.querySelectorAll('#pnodes tbody tr')].map(r => r.dataset.name)"
        )),
        within=30, what="the overview's PNode rows", accept=lambda seen: seen == names,
    )  # fmt: skip
    assert shown == names
    wait.until_sync(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('#networks tbody tr')].map(r => r.dataset.name)"
        ),
        within=30, what="both networks listed", accept=lambda seen: seen == ["chain", "digits"],
    )  # fmt: skip


async def test_network_page_draws_one_node_per_replica_on_its_pnode(
    dashboard_cluster: Cluster, signed_in: webdriver.Chrome
) -> None:
    browser = signed_in
    _open(browser, f"{dashboard_cluster.ui}/networks/chain")
    placed = await _allocations(dashboard_cluster, "chain")
    assert len(placed) == CHAIN_SLOTS

    def drawn() -> dict[str, tuple[str, int]]:
        return {n["id"]: (n["pnode"], n["epoch"]) for n in _slots(browser)}

    want = {slot: (a.spec.pnode, a.spec.epoch) for slot, a in placed.items()}
    wait.until_sync(drawn, within=30, what="the chain's slots drawn", accept=lambda d: d == want)
    labels = {n["id"]: n["label"] for n in _slots(browser)}
    for slot, (pnode, epoch) in want.items():
        assert pnode in labels[slot].splitlines(), (slot, labels[slot])
        assert f"epoch {epoch}" in labels[slot].splitlines(), (slot, labels[slot])
    # Replicas of one VNode are separate nodes, on different PNodes.
    assert want["v0#0"][0] != want["v0#1"][0]
    _screenshot(browser, "network")


async def test_pnode_page_shows_its_allocations(
    dashboard_cluster: Cluster, signed_in: webdriver.Chrome
) -> None:
    browser = signed_in
    _, allocations, _ = await cluster.read_state(dashboard_cluster.store_url)
    busiest = max(
        dashboard_cluster.fleet,
        key=lambda agent: sum(a.spec.pnode == agent.name for a in allocations),
    )
    hosted = sorted(
        (a.spec.network, a.spec.vnode) for a in allocations if a.spec.pnode == busiest.name
    )
    _open(browser, f"{dashboard_cluster.ui}/pnodes/{busiest.name}")
    rows = wait.until_sync(
        lambda: sorted(tuple(r) for r in browser.execute_script(
            "return [...document.querySelectorAll('#allocations tbody tr')]"
            ".map(r => [r.cells[0].textContent, r.cells[1].textContent])"
        )),
        within=30, what=f"{busiest.name}'s allocations", accept=lambda seen: seen == hosted,
    )  # fmt: skip
    assert rows == hosted
    assert browser.find_element("id", "lease").text.startswith("live")
    _screenshot(browser, "pnode")


async def test_job_curve_gains_points_while_training_runs(
    dashboard_cluster: Cluster, signed_in: webdriver.Chrome
) -> None:
    browser = signed_in
    metadata = (("authorization", f"Bearer {ADMIN}"),)
    channel = aio.insecure_channel(dashboard_cluster.served.address)
    jobs = job_pb2_grpc.JobServiceStub(channel)
    try:
        await cluster.Api(dashboard_cluster.served.address, token=ADMIN).wait_resolvable(
            "digits", {v["name"]: 1 for v in DIGITS["spec"]["vnodes"]}, within=60
        )
        await jobs.Train(
            job_pb2.TrainRequest(
                header=cluster.HEADER, name="curve", network="digits", epochs=200,
                batch_size=64, optimizer="adam", learning_rate=0.01, seed=1,
            ),
            metadata=metadata, timeout=30,
        )  # fmt: skip
        _open(browser, f"{dashboard_cluster.ui}/jobs/curve")
        marker = browser.execute_script("window.__sameDocument = true; return true")
        assert marker

        def points() -> int:
            return int(browser.execute_script("return (window.dcnr.data?.points || []).length"))

        first = wait.until_sync(points, within=60, what="the first points of the curve",
                                accept=lambda n: n >= 3)  # fmt: skip
        later = wait.until_sync(points, within=60, what="the curve gaining points",
                                accept=lambda n: n >= first + 5)  # fmt: skip
        assert later > first
        # Drawn by uPlot, without a reload: the same document, its chart holding the points.
        assert browser.execute_script("return window.__sameDocument === true")
        drawn = browser.execute_script("return window.dcnr.chart.data[0].length")
        assert drawn >= later
        assert int(browser.find_element("id", "point-count").text.split()[0]) >= later
        _screenshot(browser, "job")
    finally:
        await jobs.CancelJob(
            job_pb2.CancelJobRequest(header=cluster.HEADER, name="curve", reason="test done"),
            metadata=metadata, timeout=30,
        )  # fmt: skip
        await channel.close(None)


async def test_network_page_shows_vnodes_moving_after_an_agent_is_killed(
    dashboard_cluster: Cluster, signed_in: webdriver.Chrome
) -> None:
    browser = signed_in
    _open(browser, f"{dashboard_cluster.ui}/networks/chain")
    before = await _allocations(dashboard_cluster, "chain")
    victim_name = before["v0#0"].spec.pnode
    victim = next(a for a in dashboard_cluster.fleet if a.name == victim_name)
    moving = sorted(slot for slot, a in before.items() if a.spec.pnode == victim_name)
    wait.until_sync(
        lambda: {n["id"]: n["pnode"] for n in _slots(browser)},
        within=30, what="the chain drawn before the kill",
        accept=lambda d: d == {s: a.spec.pnode for s, a in before.items()},
    )  # fmt: skip
    browser.execute_script("window.__sameDocument = true")

    victim.kill()  # SIGKILL: no goodbye, the lease runs out

    def moved(nodes: list[dict[str, Any]]) -> bool:
        by_id = {n["id"]: n for n in nodes}
        return len(by_id) == CHAIN_SLOTS and all(
            by_id[s]["pnode"] not in ("", victim_name)
            and by_id[s]["epoch"] > before[s].spec.epoch
            and by_id[s]["phase"] == "Running"
            for s in moving
        )

    after = wait.until_sync(
        lambda: _slots(browser), within=60, what=f"{moving} moved off {victim_name}", accept=moved,
        every=0.2,
    )  # fmt: skip
    assert browser.execute_script("return window.__sameDocument === true"), "the page reloaded"
    placed = await _allocations(dashboard_cluster, "chain")
    for node in after:
        if node["id"] in moving:
            assert node["pnode"] == placed[node["id"]].spec.pnode
    # The table below the graph moved with it.
    rows = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#slots tbody tr')]"
        ".map(r => [r.dataset.slot, r.dataset.pnode]))"
    )
    assert all(rows[s] != victim_name for s in moving)
    _screenshot(browser, "network-failover")
    # The overview's screenshot last, when it has the most to show: the killed PNode no
    # longer Ready, the job, the placements and migrations among the events.
    _open(browser, f"{dashboard_cluster.ui}/")
    wait.until_sync(
        lambda: browser.execute_script(
            "return document.querySelector(`#pnodes tr[data-name='${arguments[0]}']`)"
            "?.dataset.phase", victim_name,
        ),
        within=30, what=f"{victim_name} no longer Ready on the overview",
        accept=lambda phase: phase in ("NotReady", "Lost"),
    )  # fmt: skip
    _screenshot(browser, "overview")


def test_json_endpoints_answer_the_same_data(dashboard_cluster: Cluster) -> None:
    request = urllib.request.Request(
        f"{dashboard_cluster.ui}/api/networks/chain",
        headers={"Authorization": f"Bearer {READ_ONLY}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        document = json.load(reply)
    assert document["network"]["name"] == "chain"
    assert len(document["nodes"]) == CHAIN_SLOTS
    assert {e["source"] for e in document["edges"]} <= {n["id"] for n in document["nodes"]}


def test_dcnctl_draws_the_network_as_dot(dashboard_cluster: Cluster) -> None:
    """`dcnctl get network chain -o dot` against the same cluster: one Graphviz node per
    replica slot, on the PNode the store says, with the read-only token."""
    drawn = subprocess.run(
        [procs.script("dcnctl"), "--server", dashboard_cluster.served.address, "--insecure",
         "--token", READ_ONLY, "get", "network", "chain", "-o", "dot"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "DCNR_CONFIG": os.devnull},
    )  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.startswith('digraph "chain" {')
    _, allocations, _ = asyncio.run(cluster.read_state(dashboard_cluster.store_url))
    chain = [a for a in allocations if a.spec.network == "chain"]
    assert len(chain) == CHAIN_SLOTS
    for a in chain:
        slot = f"{a.spec.vnode}#{a.spec.replica}"
        assert f'"{slot}" [label="{slot}\\n{a.spec.pnode}\\nepoch {a.spec.epoch}"' in drawn.stdout
    refused = subprocess.run(
        [procs.script("dcnctl"), "--server", dashboard_cluster.served.address, "--insecure",
         "--token", READ_ONLY, "get", "pnodes", "-o", "dot"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "DCNR_CONFIG": os.devnull},
    )  # fmt: skip
    assert refused.returncode != 0
    assert "-o dot draws one network" in refused.stderr


async def test_job_page_marks_attempts_and_rollbacks(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """A curve with a rollback (attempt 2 restarts from the step-40 checkpoint after reaching
    step 55), served in-process: the page marks both on the time axis and lists them."""
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clocks.SystemClock()
    view = view_mod.View(store, clock, config=config_mod.ControlPlaneConfig())
    history = [(1, s) for s in range(0, 60, 5)] + [(2, s) for s in range(40, 80, 5)]

    def at(attempt: int, step: int) -> job_model.Job:
        status = job_model.JobStatus(
            phase="Running", attempt=attempt, step=step, loss=2.0 / (1 + step)
        )
        return job_model.Job(
            metadata=meta.ObjectMeta(name="rolled"), spec=job_model.JobSpec(network="n"),
            status=status,
        )  # fmt: skip

    stored = await store.create(at(*history[-1]))  # the store holds the latest progress
    dashboard = site.Dashboard(
        view=view, store=store, clock=clock, tokens=auth.Tokens(), feed=job_watch.JobFeed(clock)
    )
    for t, (attempt, step) in enumerate(history):
        point = at(attempt, step)
        point.metadata = stored.metadata
        dashboard.curves.observe(point, 1_000_000.0 + t)
    await dashboard.start("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{dashboard.port}/jobs/rolled"
        await asyncio.to_thread(_open, browser, url)
        marks = await asyncio.to_thread(
            browser.execute_script,
            "return [...document.querySelectorAll('#marks li')].map(li => li.textContent)",
        )
        drawn = await asyncio.to_thread(
            browser.execute_script, "return window.dcnr.chart.data[0].length"
        )
    finally:
        await dashboard.stop()
        await store.close()
    # Both at the first point of attempt 2: a new attempt, and a step below the last one.
    assert [m.split(": ", 1)[1] for m in marks] == ["attempt 2", "rollback to step 40"]
    assert drawn == len(history)
