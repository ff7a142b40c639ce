// Shared helpers. Data from coordd is only ever placed with textContent or attributes set
// through the DOM, never parsed as HTML: a log line "<script>" shows as text.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function replace(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

export async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("signed out");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

let csrfToken = null;
export async function post(url) {
  if (csrfToken === null) csrfToken = (await getJSON("/api/session")).csrf;
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrfToken },
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

export function when(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function clock(seconds) {
  const d = new Date(seconds * 1000);
  return d.toTimeString().slice(0, 8);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m} min ${Math.round(seconds % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function percent(x) {
  return x === null || x === undefined ? "-" : `${(x * 100).toFixed(1)} %`;
}

export function number(x, digits = 2) {
  return x === null || x === undefined ? "-" : Number(x).toFixed(digits);
}

export function stateBadge(state) {
  return el("span", { class: `state state-${String(state).toLowerCase()}` }, state);
}

export function pager(container, meta, onPage) {
  const pages = Math.max(1, Math.ceil(meta.total / meta.per_page));
  replace(container,
    el("button", { disabled: meta.page <= 1 ? "" : null, onclick: () => onPage(meta.page - 1) },
      "‹ newer"),
    el("span", {}, ` page ${meta.page} of ${pages} (${meta.total}) `),
    el("button", { disabled: meta.page >= pages ? "" : null,
      onclick: () => onPage(meta.page + 1) }, "older ›"));
}
