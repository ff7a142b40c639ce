import { el, getJSON, number, pager, percent, replace, stateBadge, when } from "/static/common.js";

const REFRESH_MS = 3000;
const select = document.getElementById("state");
const params = new URLSearchParams(window.location.search);
let page = Number(params.get("page") || 1);
select.value = params.get("state") || "";

async function load() {
  const query = new URLSearchParams({ state: select.value, page });
  try {
    const data = await getJSON(`/api/jobs?${query}`);
    replace(document.querySelector("#jobs tbody"), data.jobs.map(row));
    pager(document.getElementById("pager"), data, (p) => { page = p; load(); });
    document.getElementById("error").textContent = "";
  } catch (error) {
    document.getElementById("error").textContent = String(error.message || error);
  }
}

function row(job) {
  return el("tr", { "data-job": job.id },
    el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(job.id)}` }, job.name),
      el("div", { class: "sub" }, job.id)),
    el("td", {}, stateBadge(job.state)),
    el("td", {}, `${job.nodes_held} / ${job.nodes_target ?? "-"} / ${job.nodes_min ?? "-"}`),
    el("td", {}, job.generation), el("td", {}, job.reformations),
    el("td", {}, percent(job.goodput)), el("td", {}, number(job.steps_per_s)),
    el("td", {}, job.step ?? "-"), el("td", {}, when(job.started)),
    el("td", {}, when(job.finished)));
}

select.addEventListener("change", () => {
  page = 1;
  history.replaceState(null, "", `?state=${encodeURIComponent(select.value)}`);
  load();
});
load();
setInterval(load, REFRESH_MS);
