import { lineChart } from "/static/chart.js";
import { clock, duration, el, getJSON, number, percent, post, replace, stateBadge, when }
  from "/static/common.js";

const jobId = decodeURIComponent(window.location.pathname.split("/").pop());
const MAX_LOG_LINES = 1000;
const PROGRESS_REFRESH_MS = 2000;  // progress lines move the figures: redraw at most this often
const AGES_REFRESH_MS = 5000;      // heartbeat ages and steps/s when nothing else happens
const KIND = { in_place: "in place", restart: "restart" };
let stream = null, lastLogId = 0, pending = null, pendingDue = 0, ended = false;

const $ = (id) => document.getElementById(id);
const rankFilter = () => $("rank").value.trim();

function showError(error) { $("error").textContent = error ? String(error.message || error) : ""; }

async function refresh() {
  pending = null;
  try {
    render(await getJSON(`/api/jobs/${encodeURIComponent(jobId)}`));
    showError(null);
  } catch (error) { showError(error); }
}

// One redraw at a time; an urgent one (a job event) brings a slower pending one forward.
function soon(delay = 150) {
  const due = Date.now() + delay;
  if (pending !== null) {
    if (pendingDue <= due) return;
    clearTimeout(pending);
  }
  pendingDue = due;
  pending = setTimeout(refresh, delay);
}

function render(data) {
  const s = data.summary, job = data.job;
  document.title = `coord: ${s.name}`;
  $("title").textContent = `${s.name} `;
  $("title").append(el("span", { class: "sub" }, s.id));
  replace($("state"), stateBadge(s.state));
  $("cancel").hidden = Boolean(s.finished);
  replace($("summary"), [
    ["nodes held / target / min", `${s.nodes_held} / ${s.nodes_target ?? "-"} / ${s.nodes_min ?? "-"}`],
    ["generation", s.generation], ["re-formations", s.reformations],
    ["goodput", percent(s.goodput)], ["steps/s", number(s.steps_per_s)], ["step", s.step ?? "-"],
    ["started", when(s.started)], ["finished", when(s.finished)],
    ["reason", s.reason || "-"],
  ].map(([name, value]) => el("div", { class: "card" }, el("div", { class: "sub" }, name),
    el("div", { class: "big", "data-field": name }, value))));
  renderChart(data);
  renderTimeline(data.reformations);
  renderCurves(data);
  replace($("nodes").querySelector("tbody"), data.nodes.map((n) => el("tr", { "data-node": n.id },
    el("td", {}, n.id), el("td", {}, stateBadge(n.state)), el("td", {}, n.host || "-"),
    el("td", {}, `${n.provider}${n.market ? ` (${n.market})` : ""}`),
    el("td", {}, n.heartbeat_age_s === null ? "-" : `${n.heartbeat_age_s} s`))));
  replace($("events"), data.events.slice().reverse().map((e) => el("div", { class: "event" },
    el("span", { class: "sub" }, `${clock(e.time)}  g${e.generation}  ${e.kind}  `), e.message,
    e.unreadable ? el("span", { class: "sub" }, `  (data unreadable: ${e.unreadable})`) : null)));
  $("spec").textContent = JSON.stringify(JSON.parse(job.spec_json || "{}"), null, 2);
}

function bands(data) {
  return data.reformations.map((r) => ({
    from: r.began, to: r.recovered_at ?? data.now, cls: r.recovered_at ? "" : "recovering",
    title: `generation ${r.generation}: ${r.cause} (${KIND[r.kind]})`,
  }));
}

function renderChart(data) {
  const series = [
    { name: "nodes in job", points: data.members, axis: "left", cls: "nodes", step: true },
    { name: "steps", points: data.steps, axis: "right", cls: "steps" },
  ];
  if (!data.members.length && !data.steps.length) {
    replace($("chart"), el("p", { class: "hint" }, "no generation has started yet"));
    return;
  }
  replace($("chart"), lineChart({ series, bands: bands(data), end: data.now }));
}

function renderTimeline(reformations) {
  const rows = reformations.slice().reverse().map((r) => el("tr", {
    class: `reform ${r.recovered_at ? "" : "recovering"}`, "data-kind": r.kind,
    "data-generation": r.generation,
  },
    el("td", {}, when(r.time)), el("td", {}, r.generation), el("td", {}, KIND[r.kind]),
    el("td", {}, r.cause),
    el("td", { class: "members" }, `${r.old_members.join(", ") || "-"} → ${r.new_members.join(", ") || "-"}`,
      r.removed.length ? el("div", { class: "sub" }, `lost: ${r.removed.join(", ")}`) : null,
      r.added.length ? el("div", { class: "sub" }, `added: ${r.added.join(", ")}`) : null),
    el("td", {}, r.recover_s === null ? "recovering…" : duration(r.recover_s)),
    el("td", {}, r.steps_lost ?? "-")));
  replace($("timeline").querySelector("tbody"),
    rows.length ? rows : [el("tr", {}, el("td", { colspan: 7, class: "hint" }, "none: the job has kept its first membership"))]);
}

function renderCurves(data) {
  const names = Object.keys(data.curves);
  replace($("curves"), names.length ? names.map((name) => el("div", {}, el("div", { class: "sub" }, name),
    lineChart({ series: [{ name, points: data.curves[name], axis: "left" }], bands: bands(data),
      end: data.now, width: 420, height: 160 })))
    : [el("p", { class: "hint" }, "the trainer prints no `step=N key=value` lines")]);
}

function appendLog(line) {
  if (line.id <= lastLogId) return;
  lastLogId = line.id;
  const box = $("logs");
  const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.append(el("div", { class: `logline ${line.stream === 2 ? "stderr" : ""}`, "data-rank": line.rank },
    el("span", { class: "meta" }, `${clock(line.time)} ${line.node}/${line.rank}`), line.text));
  while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
  if (atEnd) box.scrollTop = box.scrollHeight;
}

async function connect() {
  if (stream) stream.close();
  lastLogId = 0;
  replace($("logs"));
  const rank = rankFilter();
  // Subscribe first, then read history: nothing between the two is missed (duplicates drop by id).
  stream = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/live?rank=${encodeURIComponent(rank)}`);
  stream.addEventListener("job", () => soon());
  stream.addEventListener("log", (event) => {
    const line = JSON.parse(event.data);
    appendLog(line);
    if (line.text.startsWith("step=")) soon(PROGRESS_REFRESH_MS);
  });
  stream.addEventListener("open", () => { $("live").textContent = ended ? "" : "● live"; soon(); });
  stream.addEventListener("end", () => { ended = true; stream.close(); $("live").textContent = "ended"; refresh(); });
  stream.addEventListener("error", () => { if (!ended) $("live").textContent = "reconnecting…"; });
  const query = new URLSearchParams({ tail: 200, rank });
  try {
    (await getJSON(`/api/jobs/${encodeURIComponent(jobId)}/logs?${query}`)).lines.forEach(appendLog);
  } catch (error) { showError(error); }
  refresh();
}

$("rank").addEventListener("change", connect);
$("cancel").addEventListener("click", async () => {
  if (!window.confirm(`Cancel job ${jobId}? Its workers are stopped.`)) return;
  try {
    await post(`/api/jobs/${encodeURIComponent(jobId)}/cancel`);
    refresh();
  } catch (error) { showError(error); }
});
connect();
setInterval(() => { if (!ended) soon(); }, AGES_REFRESH_MS);
