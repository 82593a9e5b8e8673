// The longrun dashboard. Everything goes through the server's HTTP/JSON
// API with a bearer token from sessionStorage (never a cookie, so a page
// elsewhere cannot act for the user). Live updates come from Server-Sent
// Events read with fetch (EventSource cannot send the Authorization
// header); nothing polls the operations.

const TOKEN_KEY = "longrun.token";
const PAGE_SIZE = 25;

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
};

// ---- the API ----

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function headers(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : {};
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

// Server-Sent Events over fetch: yields {event, id, data}.
async function* events(path, signal) {
  const response = await fetch(path, {
    headers: headers({ Accept: "text/event-stream" }),
    signal,
  });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { event: "message", id: null, data: "" };
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) message.data += line.slice(5).trimStart();
        else if (line.startsWith("event:")) message.event = line.slice(6).trim();
        else if (line.startsWith("id:")) message.id = line.slice(3).trim();
      }
      if (message.data) yield { ...message, data: JSON.parse(message.data) };
    }
  }
}

// ---- state ----

const state = {
  caller: null,
  view: "operations",
  filter: "",
  pageToken: "",
  nextPageToken: "",
  rows: new Map(),
  live: null,
  detailLive: null,
  detail: null,
  queueTimer: null,
};

const canWrite = () => ["writer", "admin"].includes(state.caller?.role);
const shortId = (name) => name.replace(/^operations\//, "");

function say(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function when(timestamp) {
  if (!timestamp) return "";
  return new Date(timestamp).toLocaleString();
}

function age(timestamp) {
  if (!timestamp) return "—";
  const seconds = Math.max(0, (Date.now() - new Date(timestamp).getTime()) / 1000);
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

// ---- sign in ----

async function start() {
  try {
    state.caller = await call("GET", "/v1/caller");
  } catch (error) {
    if (error.status === 401) return showLogin(sessionStorage.getItem(TOKEN_KEY) ? error.message : "");
    return say(error.message, true);
  }
  $("login").hidden = true;
  const who = $("who");
  who.replaceChildren(
    el("span", { text: `${state.caller.name} · ${state.caller.role}` + (state.caller.tenant ? ` · ${state.caller.tenant}` : "") }),
  );
  if (sessionStorage.getItem(TOKEN_KEY)) {
    const out = el("button", { type: "button", id: "sign-out", text: "Sign out" });
    out.addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      location.reload();
    });
    who.append(out);
  }
  $("tenant-filter").hidden = !state.caller.allTenants;
  show("operations");
}

function showLogin(message) {
  for (const id of ["operations", "detail", "queues"]) $(id).hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  start();
});

// ---- views ----

function show(view) {
  state.view = view;
  for (const id of ["operations", "detail", "queues"]) $(id).hidden = id !== view;
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.view === (view === "detail" ? "operations" : view));
  }
  if (view !== "detail") stopDetail();
  clearInterval(state.queueTimer);
  if (view === "operations") listOperations();
  if (view === "queues") {
    loadQueues();
    state.queueTimer = setInterval(loadQueues, 5000);
  }
}

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => state.caller && show(tab.dataset.view));
}

// ---- the operations list ----

function composeFilter() {
  const parts = [];
  const st = $("filter-state").value;
  const kind = $("filter-kind").value.trim();
  const tenant = $("filter-tenant").value.trim();
  if (st) parts.push(`state = ${st}`);
  if (kind) parts.push(`kind = ${JSON.stringify(kind)}`);
  if (tenant) parts.push(`tenant = ${JSON.stringify(tenant)}`);
  return parts.join(" AND ");
}

$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  state.filter = composeFilter();
  state.pageToken = "";
  listOperations();
});
$("next-page").addEventListener("click", () => {
  state.pageToken = state.nextPageToken;
  listOperations();
});
$("first-page").addEventListener("click", () => {
  state.pageToken = "";
  listOperations();
});

async function listOperations() {
  const query = new URLSearchParams({ page_size: PAGE_SIZE });
  if (state.filter) query.set("filter", state.filter);
  if (state.pageToken) query.set("page_token", state.pageToken);
  let page;
  try {
    page = await call("GET", `/v1/operations?${query}`);
  } catch (error) {
    return say(error.message, true);
  }
  say("");
  state.rows.clear();
  const body = $("rows");
  body.replaceChildren();
  for (const op of page.operations ?? []) body.append(row(op));
  $("empty").hidden = (page.operations ?? []).length > 0;
  state.nextPageToken = page.nextPageToken ?? "";
  $("next-page").disabled = !state.nextPageToken;
  $("first-page").disabled = !state.pageToken;
  loadCounts();
  follow();
}

function stateBadge(op) {
  const name = op.metadata?.state ?? "STATE_UNSPECIFIED";
  return el("span", { class: `badge ${name.toLowerCase()}`, text: name });
}

function progressBar(op) {
  const percent = op.done && !op.error ? 100 : op.metadata?.progressPercent ?? 0;
  const bar = el("div", { class: "progress", role: "progressbar", "aria-valuenow": String(percent), "aria-valuemin": "0", "aria-valuemax": "100" });
  const fill = el("div");
  // Set through the CSSOM: the page's CSP allows no inline style attribute.
  fill.style.width = `${percent}%`;
  bar.append(fill);
  return bar;
}

function row(op) {
  const tr = el(
    "tr",
    { "data-name": op.name, tabindex: "0" },
    el("td", { class: "mono" }, el("a", { href: `#${op.name}`, text: shortId(op.name) })),
    el("td", { text: op.metadata?.kind ?? "" }),
    el("td", {}, stateBadge(op)),
    el("td", {}, progressBar(op)),
    el("td", { text: String(op.metadata?.attempt ?? 0) }),
    el("td", { text: when(op.metadata?.createTime) }),
  );
  tr.addEventListener("click", (event) => {
    event.preventDefault();
    openDetail(op.name);
  });
  state.rows.set(op.name, tr);
  return tr;
}

// Live: every change of what the filter shows, over one event stream.
async function follow() {
  state.live?.abort();
  const controller = new AbortController();
  state.live = controller;
  const query = state.filter ? `?${new URLSearchParams({ filter: state.filter })}` : "";
  try {
    for await (const message of events(`/v1/operations:watch${query}`, controller.signal)) {
      if (message.event === "error") throw new ApiError(message.data.error?.code, message.data);
      if (message.event === "resync") {
        // Changes were missed: list again (which follows again).
        listOperations();
        return;
      }
      const op = message.data;
      const old = state.rows.get(op.name);
      if (message.event === "left" || message.event === "deleted") {
        // No longer what the filter shows (or gone).
        old?.remove();
        state.rows.delete(op.name);
      } else if (old) old.replaceWith(row(op));
      else if (!state.pageToken) {
        $("rows").prepend(row(op));
        $("empty").hidden = true;
      }
      countsSoon();
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    // Changes were missed or the stream broke: list again, which follows
    // again.
    setTimeout(() => state.view === "operations" && state.live === controller && listOperations(), 1000);
  }
}

let countsPending = null;
function countsSoon() {
  if (countsPending) return;
  countsPending = setTimeout(() => {
    countsPending = null;
    loadCounts();
  }, 500);
}

async function loadCounts() {
  let stats;
  try {
    stats = await call("GET", "/v1/queues");
  } catch {
    return;
  }
  const totals = { QUEUED: 0, RUNNING: 0, CANCELLING: 0, "FINISHED (15 min)": 0 };
  for (const kind of stats.kinds ?? []) {
    totals.QUEUED += Number(kind.queued ?? 0);
    totals.RUNNING += Number(kind.running ?? 0);
    totals.CANCELLING += Number(kind.cancelling ?? 0);
    totals["FINISHED (15 min)"] += (kind.finishedPerMinute ?? []).reduce((a, b) => a + Number(b), 0);
  }
  $("counts").replaceChildren(
    ...Object.entries(totals).map(([name, n]) =>
      el("span", { class: "count", "data-state": name }, el("b", { text: String(n) }), ` ${name.toLowerCase()}`),
    ),
  );
}

// ---- one operation ----

function stopDetail() {
  state.detailLive?.abort();
  state.detailLive = null;
}

async function openDetail(name) {
  stopDetail();
  state.live?.abort();
  show("detail");
  history.replaceState(null, "", `#${name}`);
  $("detail-name").textContent = name;
  $("cancel").hidden = !canWrite();
  $("delete").hidden = !canWrite();
  let op;
  try {
    op = await call("GET", `/v1/${name}`);
  } catch (error) {
    return say(error.message, true);
  }
  renderDetail(op);
  loadDeliveries(name);
  const controller = new AbortController();
  state.detailLive = controller;
  try {
    for await (const message of events(`/v1/${name}:watch`, controller.signal)) {
      if (message.event === "error") break;
      renderDetail(message.data);
    }
  } catch {
    // The stream ended (the operation is done, or gone); what is shown stays.
  }
  if (!controller.signal.aborted) loadDeliveries(name);
}

function renderDetail(op) {
  state.detail = op;
  const meta = op.metadata ?? {};
  const percent = op.done && !op.error ? 100 : meta.progressPercent ?? 0;
  const bar = $("detail-bar");
  bar.style.width = `${percent}%`;
  bar.parentElement.setAttribute("aria-valuenow", String(percent));
  const facts = [
    ["State", meta.state],
    ["Kind", meta.kind],
    ["Tenant", meta.tenant || "—"],
    ["Progress", `${percent}%${meta.statusMessage ? ` · ${meta.statusMessage}` : ""}`],
    ["Attempt", `${meta.attempt ?? 0} of ${meta.maxAttempts ?? "?"}`],
    ["Created", when(meta.createTime)],
    ["Started", when(meta.startTime)],
    ["Updated", when(meta.updateTime)],
    ["Ended", when(meta.endTime)],
    ["Next attempt", when(meta.nextAttemptTime)],
    ["Version", meta.version],
  ];
  $("detail-meta").replaceChildren(
    ...facts.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v), "data-fact": k })]),
  );
  $("detail-meta").querySelector('[data-fact="State"]')?.replaceChildren(stateBadge(op));
  const attempts = (meta.failedAttempts ?? []).map((a) =>
    attemptItem(`Attempt ${a.attempt} · ${when(a.startTime)} → ${when(a.endTime)}`, a.error),
  );
  if (op.done) {
    attempts.push(op.error ? attemptItem(`Attempt ${meta.attempt} ended the operation`, op.error) : el("li", { class: "ok", text: `Attempt ${meta.attempt} succeeded` }));
  } else if (meta.attempt) {
    attempts.push(el("li", { text: `Attempt ${meta.attempt}: ${meta.state}` }));
  }
  $("attempts").replaceChildren(...attempts);
  const done = op.done;
  $("cancel").disabled = done || meta.requestedCancellation;
  $("delete").disabled = !done;
  renderResult(op);
}

function attemptItem(title, error) {
  return el(
    "li",
    { class: "failed" },
    el("b", { text: title }),
    el("div", { text: `code ${error.code}: ${error.message ?? ""}` }),
    el("pre", { text: JSON.stringify(error.details ?? [], null, 2) }),
  );
}

function renderResult(op) {
  const box = $("result");
  if (!op.done) return box.replaceChildren(el("p", { class: "muted", text: "Not done yet." }));
  if (op.error) return box.replaceChildren(el("p", { class: "error", text: `Failed: ${op.error.message}` }));
  const response = op.response ?? {};
  const children = [el("pre", { text: JSON.stringify(response, null, 2) })];
  if (typeof response["@type"] === "string" && response["@type"].endsWith("longrun.v1.Report") && response.name) {
    const link = el("a", { href: "#", id: "download", text: `Download ${response.name}` });
    link.addEventListener("click", (event) => {
      event.preventDefault();
      download(response.name);
    });
    children.unshift(link);
  }
  box.replaceChildren(...children);
}

async function download(reportName) {
  const response = await fetch(`/v1/${reportName}:download`, { headers: headers() });
  if (!response.ok) return say(`download failed: HTTP ${response.status}`, true);
  const blob = await response.blob();
  const disposition = response.headers.get("content-disposition") ?? "";
  const file = /filename="([^"]+)"/.exec(disposition)?.[1] ?? "report";
  const link = el("a", { href: URL.createObjectURL(blob), download: file });
  document.body.append(link);
  link.click();
  link.remove();
}

async function loadDeliveries(name) {
  let page;
  try {
    page = await call("GET", `/v1/${name}/deliveries`);
  } catch {
    return;
  }
  $("deliveries").replaceChildren(
    ...(page.deliveries ?? []).map((d) =>
      el("tr", {}, el("td", { text: d.type ?? "" }), el("td", { text: d.state ?? "" }), el("td", { text: String(d.attempts ?? 0) }), el("td", { text: String(d.lastStatusCode ?? "") }), el("td", { text: d.lastError ?? "" })),
    ),
  );
}

$("back").addEventListener("click", () => {
  history.replaceState(null, "", "#");
  show("operations");
});

$("cancel").addEventListener("click", async () => {
  const name = state.detail?.name;
  if (!name || !confirm(`Cancel ${name}?`)) return;
  try {
    await call("POST", `/v1/${name}:cancel`, {});
    say("Cancellation requested.");
  } catch (error) {
    say(error.message, true);
  }
});

$("delete").addEventListener("click", async () => {
  const name = state.detail?.name;
  if (!name || !confirm(`Delete ${name}? This cannot be undone.`)) return;
  try {
    await call("DELETE", `/v1/${name}`);
    say(`Deleted ${name}.`);
    history.replaceState(null, "", "#");
    show("operations");
  } catch (error) {
    say(error.message, true);
  }
});

// ---- queues ----

function sparkline(values) {
  const numbers = values.map(Number);
  const max = Math.max(1, ...numbers);
  const width = 150;
  const height = 28;
  const step = width / Math.max(1, numbers.length - 1);
  const points = numbers.map((n, i) => `${(i * step).toFixed(1)},${(height - (n / max) * (height - 2) - 1).toFixed(1)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `finished per minute: ${numbers.join(", ")}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  return svg;
}

async function loadQueues() {
  let stats;
  try {
    stats = await call("GET", "/v1/queues");
  } catch (error) {
    return say(error.message, true);
  }
  $("queue-rows").replaceChildren(
    ...(stats.kinds ?? []).map((q) => {
      const limit = Number(q.concurrency ?? 0);
      return el(
        "tr",
        { "data-kind": q.kind },
        el("td", { text: q.kind }),
        el("td", { text: String(q.queued ?? 0) }),
        el("td", { text: `${q.running ?? 0} / ${limit > 0 ? limit : "workers"}` }),
        el("td", { text: String(q.cancelling ?? 0) }),
        el("td", { text: age(q.oldestQueuedTime) }),
        el("td", {}, sparkline(q.finishedPerMinute ?? [])),
      );
    }),
  );
}

// A link to one operation opens it.
window.addEventListener("load", async () => {
  await start();
  const name = decodeURIComponent(location.hash.slice(1));
  if (state.caller && name.startsWith("operations/")) openDetail(name);
});
