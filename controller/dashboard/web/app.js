// The DCNR dashboard: one script for every page, no framework. The page's route is its
// path (/, /networks/NAME, /pnodes/NAME, /jobs/NAME); its data arrives as server-sent
// events from /api/watch/<route> (the same JSON as /api/<route>), each a whole new
// version, which is drawn in place. Graph layout: cytoscape + cytoscape-dagre; curves:
// uPlot (vendor.js, built by `make ui` from ui/package-lock.json).
"use strict";

const PHASE_COLOURS = {
  Running: "#2c9a55", Pending: "#c98a12", Stopping: "#7a8290", Failed: "#c73a3a",
  PNodeDown: "#c73a3a", Unplaced: "#b0b6c0",
};
const state = { updates: 0, data: null, cy: null, chart: null, layoutKey: "" };
window.dcnr = state; // for people in the console, and for the browser tests

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const link = (href, text) => el("a", { href }, text);
const phase = (p) => el("span", { class: `phase ${p}` }, p);
const fmtNum = (v, digits = 4) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const mib = (bytes) => `${Math.round(bytes / 1048576)}Mi`;
const cpu = (milli) => `${milli}m`;
const when = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "–");

function table(id, headers, rows) {
  return el("div", { class: "scroll" },
    el("table", { id },
      headers.some(Boolean) ? el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))) : null,
      el("tbody", {}, rows)));
}

function cards(pairs) {
  return el("div", { class: "cards" },
    pairs.map(([label, value, id]) => el("div", { class: "card", id }, el("b", {}, value), el("span", {}, label))));
}

function eventsTable(events) {
  return table("events", ["last", "object", "type", "reason", "count", "message"],
    events.map((e) => el("tr", {},
      el("td", {}, when(e.last)), el("td", {}, e.object), el("td", {}, phase(e.type)),
      el("td", {}, e.reason), el("td", {}, e.count), el("td", { class: "msg" }, e.message))));
}

function crumb(...parts) {
  document.getElementById("crumb").replaceChildren(...parts.flatMap((p, i) => (i ? [" / ", p] : [p])));
}

// -- overview ----------------------------------------------------------------------------

function renderOverview(data, main) {
  crumb("overview");
  const c = data.counts;
  main.replaceChildren(
    el("h1", {}, "Cluster"),
    cards([["PNodes", c.pnodes, "count-pnodes"], ["Ready", c.Ready, "count-ready"],
      ["NotReady", c.NotReady, "count-notready"], ["Lost", c.Lost, "count-lost"],
      ["Bugged", c.Bugged, "count-bugged"], ["Cordoned", c.Cordoned, "count-cordoned"]]),
    el("div", { class: "grid2" },
      el("section", {}, el("h2", {}, `Networks (${data.networks.length})`),
        table("networks", ["name", "phase", "ready / desired", "vnodes"],
          data.networks.map((n) => el("tr", { "data-name": n.name },
            el("td", {}, link(`/networks/${n.name}`, n.name)), el("td", {}, phase(n.phase)),
            el("td", {}, `${n.ready} / ${n.desired}`), el("td", {}, n.vnodes))))),
      el("section", {}, el("h2", {}, `Jobs (${data.jobs.length})`),
        table("jobs", ["name", "network", "phase", "step", "loss", "accuracy"],
          data.jobs.map((j) => el("tr", { "data-name": j.name },
            el("td", {}, link(`/jobs/${j.name}`, j.name)), el("td", {}, j.network),
            el("td", {}, phase(j.phase)), el("td", {}, `${j.step} / ${j.total_steps}`),
            el("td", {}, fmtNum(j.loss)), el("td", {}, fmtNum(j.accuracy))))))),
    el("h2", {}, `PNodes (${data.pnodes.length})`),
    table("pnodes", ["name", "phase", "flags", "cpu", "memory", "vnodes", "strikes", "address"],
      data.pnodes.map((p) => el("tr", { "data-name": p.name, "data-phase": p.phase },
        el("td", {}, link(`/pnodes/${p.name}`, p.name)), el("td", {}, phase(p.phase)),
        el("td", { class: "flag" }, [p.bugged ? "Bugged " : "", p.cordoned ? "Cordoned" : ""].join("").trim()),
        el("td", {}, `${cpu(p.cpu.allocated)} / ${cpu(p.cpu.capacity)}`),
        el("td", {}, `${mib(p.memory.allocated)} / ${mib(p.memory.capacity)}`),
        el("td", {}, p.allocations), el("td", {}, p.strikes), el("td", {}, p.address)))),
    el("h2", {}, "Recent events"), eventsTable(data.events));
}

// -- network -----------------------------------------------------------------------------

function nodeLabel(n) {
  const where = n.pnode || "unplaced";
  return `${n.vnode}#${n.replica}${n.tiebreaker ? " (tiebreaker)" : ""}\n${where}\nepoch ${n.epoch}`;
}

function graphStyle() {
  return [
    { selector: "node", style: {
      shape: "round-rectangle", width: 150, height: 58, label: "data(label)",
      "text-wrap": "wrap", "text-valign": "center", "font-size": 11, color: "#fff",
      "background-color": "data(colour)", "border-width": 1, "border-color": "#1d2430",
      "min-zoomed-font-size": 6 } }, // labels too small to read are not drawn: zoom in
    { selector: "node[?critical]", style: { "border-width": 3 } },
    { selector: "node[?tiebreaker]", style: { "border-style": "dashed", "border-width": 3, "border-color": "#7b3fc4" } },
    { selector: "edge", style: {
      width: 1.5, "line-color": "#9aa3b0", "target-arrow-color": "#9aa3b0",
      "target-arrow-shape": "triangle", "curve-style": "bezier" } },
  ];
}

function drawGraph(data, container) {
  const elements = [
    ...data.nodes.map((n) => ({ group: "nodes", data: {
      id: n.id, label: nodeLabel(n), colour: PHASE_COLOURS[n.phase] || "#7a8290",
      critical: n.critical, tiebreaker: n.tiebreaker, pnode: n.pnode, epoch: n.epoch, phase: n.phase } })),
    ...data.edges.map((e) => ({ group: "edges", data: { id: e.id, source: e.source, target: e.target } })),
  ];
  const key = elements.map((e) => e.data.id).join("|");
  if (!state.cy || state.cy.container() !== container) {
    state.cy = cytoscape({
      container, style: graphStyle(), wheelSensitivity: 0.3,
      // Big graphs: draw a cached bitmap while panning and zooming.
      textureOnViewport: true, hideEdgesOnViewport: true,
    });
    state.cy.on("tap", "node", (evt) => {
      const pnode = evt.target.data("pnode");
      if (pnode) window.location.href = `/pnodes/${pnode}`;
    });
    state.layoutKey = "";
  }
  const cy = state.cy;
  if (key !== state.layoutKey) { // the set of slots changed: lay it out again
    cy.batch(() => {
      cy.elements().remove();
      cy.add(elements);
    });
    // longest-path ranks a long chain as well as network-simplex, in about 2/3 of the time.
    cy.layout({ name: "dagre", rankDir: "LR", ranker: "longest-path", nodeSep: 18, rankSep: 70,
      animate: false, fit: true, padding: 20 }).run();
    state.layoutKey = key;
  } else { // same slots: only their data moves (a new PNode, epoch, phase)
    cy.batch(() => {
      for (const e of elements) if (e.group === "nodes") cy.getElementById(e.data.id).data(e.data);
    });
  }
}

function renderNetwork(data, main) {
  const net = data.network;
  crumb(link("/", "overview"), `network ${net.name}`);
  let graph = document.getElementById("graph");
  if (!graph) {
    graph = el("div", { id: "graph" });
    main.replaceChildren(el("h1", { id: "title" }), el("div", { id: "summary" }), graph,
      el("div", { id: "below" }));
  }
  document.getElementById("title").textContent = `Network ${net.name}`;
  document.getElementById("summary").replaceChildren(
    cards([["phase", net.phase], ["ready / desired", `${net.ready} / ${net.desired}`, "ready"],
      ["vnodes", net.vnodes], ["validation", data.validation],
      ["tiebreakers", data.tiebreakers.join(", ") || "none"]]),
    el("p", { class: "legend" }, Object.entries(PHASE_COLOURS).map(([p, c]) =>
      el("span", {}, el("i", { style: `background:${c}` }), p))));
  drawGraph(data, graph);
  document.getElementById("below").replaceChildren(
    el("h2", {}, "Replica slots"),
    table("slots", ["vnode", "replica", "kind", "pnode", "epoch", "phase", "reason"],
      data.nodes.map((n) => el("tr", { "data-slot": n.id, "data-pnode": n.pnode, "data-epoch": n.epoch },
        el("td", {}, n.vnode), el("td", {}, n.replica + (n.tiebreaker ? " (tiebreaker)" : "")),
        el("td", {}, n.kind), el("td", {}, n.pnode ? link(`/pnodes/${n.pnode}`, n.pnode) : "–"),
        el("td", {}, n.epoch), el("td", {}, phase(n.phase)), el("td", {}, n.reason)))),
    el("h2", {}, "Events"), eventsTable(data.events));
}

// -- pnode -------------------------------------------------------------------------------

function renderPNode(data, main) {
  const p = data.pnode;
  crumb(link("/", "overview"), `pnode ${p.name}`);
  const t = data.trust;
  const l = data.lease;
  main.replaceChildren(
    el("h1", {}, `PNode ${p.name} `, phase(p.phase)),
    cards([["cpu allocated / capacity", `${cpu(p.cpu.allocated)} / ${cpu(p.cpu.capacity)}`],
      ["memory", `${mib(p.memory.allocated)} / ${mib(p.memory.capacity)}`],
      ["accelerators", data.capacity.accelerators.map((a) => `${a.count}×${a.type}`).join(", ") || "none"],
      ["strikes", t.strikes, "strikes"], ["bugged", t.bugged ? "yes" : "no"],
      ["cordoned", p.cordoned ? "yes" : "no"], ["lease", l.live ? "live" : "expired", "lease"]]),
    el("div", { class: "grid2" },
      el("section", {}, el("h2", {}, `Allocations (${data.allocations.length})`),
        table("allocations", ["network", "vnode", "replica", "epoch", "phase", "cpu", "memory"],
          data.allocations.map((a) => el("tr", {},
            el("td", {}, link(`/networks/${a.network}`, a.network)), el("td", {}, a.vnode),
            el("td", {}, a.replica), el("td", {}, a.epoch), el("td", {}, phase(a.phase)),
            el("td", {}, cpu(a.cpu)), el("td", {}, mib(a.memory)))))),
      el("section", {}, el("h2", {}, "Trust and lease"),
        table("trust", ["", ""], [
          ["strikes (total)", `${t.strikes} (${t.strikes_total})`], ["valid in a row (total)", `${t.consecutive_valid} (${t.valid_total})`],
          ["bugged since", when(t.bugged_since)], ["window", t.window || "–"],
          ["lease expires", when(l.expires)], ["incarnation", l.incarnation],
          ["missed heartbeats", l.missed_heartbeats], ["phase since", when(l.phase_since)],
          ["registered", when(l.registered_at)], ["address", p.address],
          ["labels", Object.entries(data.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "–"],
          ["datasets", data.datasets.join(", ") || "–"],
        ].map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))))),
    el("h2", {}, "Validation events"),
    table("validation", ["time", "job", "vnode", "check", "verdict", "message"],
      data.validation_events.map((v) => el("tr", {},
        el("td", {}, when(v.time)), el("td", {}, v.job), el("td", {}, v.vnode), el("td", {}, v.check),
        el("td", {}, v.verdict), el("td", { class: "msg" }, v.message)))),
    el("h2", {}, "Events"), eventsTable(data.events));
}

// -- job ---------------------------------------------------------------------------------

// Attempts and rollbacks, from the points: a new attempt number, or a step lower than the
// one before (the run went back to a checkpoint).
function marks(points) {
  const out = [];
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1], b = points[i];
    if (b.attempt !== a.attempt) out.push({ t: b.t, text: `attempt ${b.attempt}`, colour: "#7b3fc4" });
    if (b.step < a.step) out.push({ t: b.t, text: `rollback to step ${b.step}`, colour: "#c73a3a" });
  }
  return out;
}

function marksPlugin() {
  return { hooks: { draw: [(u) => {
    const ctx = u.ctx;
    ctx.save();
    for (const m of state.marks || []) {
      const x = Math.round(u.valToPos(m.t, "x", true));
      ctx.strokeStyle = m.colour;
      ctx.lineWidth = 2 * devicePixelRatio;
      ctx.setLineDash([6, 4]);
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
      ctx.fillStyle = m.colour;
      ctx.font = `${11 * devicePixelRatio}px sans-serif`;
      ctx.fillText(m.text, x + 4, u.bbox.top + 12 * devicePixelRatio);
    }
    ctx.restore();
  }] } };
}

function drawChart(points, container) {
  const data = [points.map((p) => p.t), points.map((p) => p.loss), points.map((p) => p.accuracy)];
  state.marks = marks(points);
  if (!state.chart || !container.contains(state.chart.root)) {
    container.replaceChildren();
    state.chart = new uPlot({
      width: Math.max(container.clientWidth - 16, 400), height: 320, plugins: [marksPlugin()],
      scales: { x: { time: true }, acc: { range: [0, 1] } },
      series: [{}, { label: "loss", stroke: "#2f6fde", width: 2, scale: "loss", spanGaps: true },
        { label: "accuracy", stroke: "#2c9a55", width: 2, scale: "acc", spanGaps: true }],
      axes: [{}, { scale: "loss", label: "loss" }, { scale: "acc", side: 1, label: "accuracy", grid: { show: false } }],
    }, data, container);
  } else {
    state.chart.setData(data);
  }
}

function renderJob(data, main) {
  const j = data.job;
  crumb(link("/", "overview"), `job ${j.name}`);
  let chart = document.getElementById("chart");
  if (!chart) {
    chart = el("div", { id: "chart" });
    main.replaceChildren(el("h1", { id: "title" }), el("div", { id: "summary" }),
      el("h2", {}, "Loss and accuracy"), chart, el("div", { id: "below" }));
  }
  document.getElementById("title").replaceChildren(`Job ${j.name} `, phase(j.phase));
  document.getElementById("summary").replaceChildren(cards([
    ["network", j.network], ["step", `${j.step} / ${j.total_steps}`, "step"], ["epoch", j.epoch],
    ["loss", fmtNum(j.loss)], ["accuracy", fmtNum(j.accuracy)], ["attempt", j.attempt],
    ["points", data.points.length, "point-count"], ["driver", j.driver || "–"]]));
  drawChart(data.points, chart);
  document.getElementById("below").replaceChildren(
    el("h2", {}, "Attempts and rollbacks"),
    el("ul", { id: "marks" }, state.marks.map((m) => el("li", {}, `${when(new Date(m.t * 1000).toISOString())}: ${m.text}`))),
    el("p", { class: "msg" }, j.message),
    el("h2", {}, "Events"), eventsTable(data.events));
}

// -- wiring ------------------------------------------------------------------------------

const RENDER = { overview: renderOverview, networks: renderNetwork, pnodes: renderPNode, jobs: renderJob };

function route() {
  const parts = window.location.pathname.split("/").filter(Boolean);
  if (parts.length === 0) return { page: "overview", path: "overview" };
  return { page: parts[0], path: `${parts[0]}/${encodeURIComponent(decodeURIComponent(parts[1]))}` };
}

function start() {
  const { page, path } = route();
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  const source = new EventSource(`/api/watch/${path}`);
  source.onopen = () => { live.textContent = "live"; live.classList.remove("off"); };
  source.onerror = () => { live.textContent = "reconnecting"; live.classList.add("off"); };
  source.onmessage = (message) => {
    const arrived = performance.now();
    const data = JSON.parse(message.data);
    state.data = data;
    if (data.error) {
      main.replaceChildren(el("p", { class: "refused", id: "error" }, data.error));
    } else {
      RENDER[page](data, main);
    }
    // When each version arrived and how long drawing it took (ms), for the benchmark.
    state.timings = [...(state.timings || []).slice(-20), { arrived, draw: performance.now() - arrived }];
    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
    if (!document.body.dataset.ready) { // milliseconds from navigation to the first drawing
      document.body.dataset.readyMs = performance.now().toFixed(1);
      document.body.dataset.ready = "1";
    }
  };
}

document.addEventListener("DOMContentLoaded", start);
