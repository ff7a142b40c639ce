import { el, getJSON, pager, replace, stateBadge } from "/static/common.js";

const REFRESH_MS = 2000;
const select = document.getElementById("state");
let page = 1;

async function load() {
  const query = new URLSearchParams({ state: select.value, page });
  try {
    const data = await getJSON(`/api/nodes?${query}`);
    replace(document.getElementById("by-state"), Object.entries(data.by_state).map(
      ([state, count]) => el("button", { class: "card", onclick: () => { select.value = state; page = 1; load(); } },
        el("div", { class: "big" }, count), stateBadge(state))));
    replace(document.querySelector("#nodes tbody"), data.nodes.map(row));
    pager(document.getElementById("pager"), data, (p) => { page = p; load(); });
    document.getElementById("error").textContent = "";
  } catch (error) {
    document.getElementById("error").textContent = String(error.message || error);
  }
}

function row(node) {
  return el("tr", { "data-node": node.id },
    el("td", {}, node.id), el("td", {}, stateBadge(node.state)), el("td", {}, node.provider),
    el("td", {}, node.market || "-"), el("td", {}, node.host || "-"),
    el("td", {}, node.job_id ? el("a", { href: `/jobs/${encodeURIComponent(node.job_id)}` }, node.job_id) : "-"),
    el("td", {}, node.heartbeat_age_s === null ? "-" : `${node.heartbeat_age_s} s`),
    el("td", {}, node.notice ? "leaving (notice)" : "-"));
}

select.addEventListener("change", () => { page = 1; load(); });
load();
setInterval(load, REFRESH_MS);
