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
  // The names ticked in the list.
  selected: new Set(),
  bulkLive: null,
  live: null,
  detailLive: null,
  detail: null,
  queueTimer: null,
  // The list's URL, filters and all, for the way back from one operation.
  listHash: "#/operations",
};

const canWrite = () => ["writer", "admin"].includes(state.caller?.role);
const shortId = (name) => name.replace(/^operations\//, "");

function say(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// A time with its zone, so a screenshot or a shared link says when.
function when(timestamp) {
  if (!timestamp) return "";
  return new Date(timestamp).toLocaleString(undefined, { timeZoneName: "short" });
}

// A length of time, short: "850 ms", "42 s", "3 min 5 s", "2 h 10 min".
function span(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const s = Math.round(seconds);
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// From one time to another (or to now), as a span; "" without a start.
function between(from, to) {
  if (!from) return "";
  const end = to ? new Date(to).getTime() : Date.now();
  return span(Math.max(0, (end - new Date(from).getTime()) / 1000));
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
  $("select-page").hidden = !canWrite();
  route();
}

function showLogin(message) {
  for (const id of ["operations", "detail", "queues", "schedules", "failed"]) $(id).hidden = true;
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
  for (const id of ["operations", "detail", "queues", "schedules", "failed"]) $(id).hidden = id !== view;
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
  if (view === "schedules") {
    loadSchedules();
    state.queueTimer = setInterval(loadSchedules, 5000);
  }
  if (view === "failed") loadFailed();
}

// ---- routes ----
//
// Every view has a URL, so Back, reload and a shared link work:
//   #/operations?state=RUNNING&kind=...&tenant=...   the list, filtered
//   #/operations/<id>                                 one operation
//   #/queues                                          the queues
//   #/schedules                                       the schedules
//   #/failed                                          failures of the last day
// (#operations/<id>, the form of earlier links, still opens one.)

const FILTER_FIELDS = ["state", "kind", "tenant", "parent"];

function parseRoute(hash) {
  const [raw, query = ""] = hash.replace(/^#\/?/, "").split("?");
  const path = decodeURIComponent(raw);
  if (path === "queues") return { view: "queues" };
  if (path === "schedules") return { view: "schedules" };
  if (path === "failed") return { view: "failed" };
  const one = /^operations\/(.+)$/.exec(path);
  if (one) return { view: "detail", name: `operations/${one[1]}` };
  return { view: "operations", params: new URLSearchParams(query) };
}

function listHash() {
  const params = new URLSearchParams();
  for (const field of FILTER_FIELDS) {
    const value = $(`filter-${field}`).value.trim();
    if (value) params.set(field, value);
  }
  const query = params.toString();
  return `#/operations${query ? `?${query}` : ""}`;
}

// Goes to a view by its URL (a new history entry unless it is the same).
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (!state.caller) return;
  const target = parseRoute(location.hash);
  if (target.view === "detail") return openDetail(target.name);
  if (target.view === "queues") return show("queues");
  if (target.view === "schedules") return show("schedules");
  if (target.view === "failed") return show("failed");
  for (const field of FILTER_FIELDS) $(`filter-${field}`).value = target.params.get(field) ?? "";
  state.filter = composeFilter();
  state.pageToken = "";
  state.listHash = listHash();
  show("operations");
}

window.addEventListener("hashchange", route);

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    if (!state.caller) return;
    const view = tab.dataset.view;
    go(view === "operations" ? state.listHash : `#/${view}`);
  });
}

// ---- the operations list ----

function composeFilter() {
  const parts = [];
  const st = $("filter-state").value;
  const kind = $("filter-kind").value.trim();
  const tenant = $("filter-tenant").value.trim();
  const parent = $("filter-parent").value.trim();
  if (st) parts.push(`state = ${st}`);
  if (parent) parts.push(`parent = ${JSON.stringify(parent)}`);
  if (kind) parts.push(`kind = ${JSON.stringify(kind)}`);
  if (tenant) parts.push(`tenant = ${JSON.stringify(tenant)}`);
  return parts.join(" AND ");
}

$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  go(listHash());
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
  state.selected.clear();
  showSelection();
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
  return el("span", { class: `badge ${stateClass(op)}`, text: name });
}

// How far an operation got: a success is full; a failure or a cancel shows
// how far it went, in its state's colour, never as a success's.
function percentOf(op) {
  return op.done && !op.error ? 100 : op.metadata?.progressPercent ?? 0;
}

function stateClass(op) {
  return (op.metadata?.state ?? "STATE_UNSPECIFIED").toLowerCase();
}

function progressBar(op) {
  const percent = percentOf(op);
  const bar = el("div", { class: `progress ${stateClass(op)}`, role: "progressbar", "aria-valuenow": String(percent), "aria-valuemin": "0", "aria-valuemax": "100" });
  const fill = el("div");
  // Set through the CSSOM: the page's CSP allows no inline style attribute.
  fill.style.width = `${percent}%`;
  bar.append(fill);
  return bar;
}

function row(op) {
  const pick = el("input", { type: "checkbox", "aria-label": `Select ${shortId(op.name)}` });
  pick.checked = state.selected.has(op.name);
  pick.hidden = !canWrite();
  pick.addEventListener("click", (event) => event.stopPropagation());
  pick.addEventListener("change", () => {
    if (pick.checked) state.selected.add(op.name);
    else state.selected.delete(op.name);
    showSelection();
  });
  const tr = el(
    "tr",
    { "data-name": op.name, tabindex: "0" },
    el("td", { class: "pick" }, pick),
    el("td", { class: "mono" }, el("a", { href: `#/${op.name}`, text: shortId(op.name) })),
    el("td", { text: op.metadata?.kind ?? "" }),
    el("td", {}, stateBadge(op)),
    el("td", {}, progressBar(op)),
    el("td", { text: String(op.metadata?.attempt ?? 0) }),
    el("td", { text: when(op.metadata?.createTime) }),
  );
  tr.addEventListener("click", (event) => {
    event.preventDefault();
    go(`#/${op.name}`);
  });
  tr.addEventListener("keydown", (event) => {
    if (event.key === "Enter") go(`#/${op.name}`);
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
        state.selected.delete(op.name);
        showSelection();
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
  // The finishes are the answering node's, since it started.
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
  // Leaving the page aborts this, even while the first read is under way.
  const controller = new AbortController();
  state.detailLive = controller;
  show("detail");
  $("detail-name").textContent = name;
  $("cancel").hidden = !canWrite();
  $("delete").hidden = !canWrite();
  $("retry").hidden = !canWrite();
  for (const id of ["detail-meta", "attempts", "result", "deliveries", "detail-request"]) $(id).replaceChildren();
  let op;
  try {
    op = await call("GET", `/v1/${name}`);
  } catch (error) {
    return controller.signal.aborted || say(error.message, true);
  }
  if (controller.signal.aborted) return;
  say("");
  renderDetail(op);
  loadDeliveries(name);
  // Durations and the ETA move on between changes.
  const clock = setInterval(() => state.detail && renderFacts(state.detail), 1000);
  controller.signal.addEventListener("abort", () => clearInterval(clock));
  try {
    for await (const message of events(`/v1/${name}:watch`, controller.signal)) {
      if (message.event === "error") break;
      // The stream's operations do not say why a queued one waits; a read
      // does (and a queued operation changes seldom).
      const queued = message.data.metadata?.state === "QUEUED";
      const op = queued ? await call("GET", `/v1/${name}`).catch(() => message.data) : message.data;
      if (controller.signal.aborted) break;
      renderDetail(op);
    }
  } catch {
    // The stream ended (the operation is done, or gone); what is shown stays.
  }
  if (!controller.signal.aborted) loadDeliveries(name);
}

// "2 (1 of 3 allowed; 1 stopped by a shutdown, which does not count)".
function attemptText(meta) {
  const attempt = meta.attempt ?? 0;
  const stopped = meta.stoppedAttempts ?? 0;
  let text = `${attempt} (${attempt - stopped} of ${meta.maxAttempts ?? "?"} allowed`;
  if (stopped > 0) text += `; ${stopped} stopped by a shutdown, which ${stopped === 1 ? "does" : "do"} not count`;
  return `${text})`;
}

// When it should be done: "12:04:05 UTC (in 3 min 5 s)", or overdue.
function estimateText(op) {
  const meta = op.metadata ?? {};
  if (op.done || meta.endTime) return "";
  if (!meta.estimatedEndTime) return "not known yet";
  const left = (new Date(meta.estimatedEndTime).getTime() - Date.now()) / 1000;
  return `${when(meta.estimatedEndTime)} (${left > 0 ? `in ${span(left)}` : "overdue"})`;
}

// Why a queued operation waits: "KEY_CONCURRENCY (key acme)", "RATE_LIMITED
// until 12:04:05 UTC".
function waitingText(meta) {
  const w = meta.waitingReason;
  if (!w?.reason) return "";
  const key = w.concurrencyKey ? ` (key ${w.concurrencyKey})` : "";
  const until = w.until ? ` until ${when(w.until)}` : "";
  return `${w.reason}${key}${until}`;
}

function renderFacts(op) {
  const meta = op.metadata ?? {};
  const percent = percentOf(op);
  const facts = [
    ["State", meta.state],
    ["Kind", meta.kind],
    ["Tenant", meta.tenant || "—"],
    ["Progress", `${percent}%${meta.statusMessage ? ` · ${meta.statusMessage}` : ""}`],
    ["Waiting", op.done ? "" : waitingText(meta)],
    ["Estimated end", estimateText(op)],
    ["Attempt", attemptText(meta)],
    ["Runs on", op.done ? "" : meta.holder],
    ["Starts at", meta.startTime || op.done ? "" : when(meta.run?.startTime)],
    ["Expires", meta.startTime || op.done ? "" : when(meta.run?.expireTime)],
    ["Priority", meta.run?.priority ? String(meta.run.priority) : ""],
    ["Concurrency key", meta.run?.concurrencyKey],
    ["Created", when(meta.createTime)],
    ["Started", when(meta.startTime)],
    ["Updated", when(meta.updateTime)],
    ["Ended", when(meta.endTime)],
    ["Queued for", between(meta.createTime, meta.startTime ?? meta.endTime)],
    ["Ran for", between(meta.startTime, meta.endTime)],
    ["Next attempt", when(meta.nextAttemptTime)],
    ["Cancel", meta.requestedCancellation ? "requested" : ""],
    ["Version", meta.version],
    ["Batch", meta.parent],
    ["Children", childrenText(meta.batch)],
    ["Trace", meta.traceId],
  ];
  $("detail-meta").replaceChildren(
    ...facts.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v), "data-fact": k })]),
  );
  $("detail-meta").querySelector('[data-fact="State"]')?.replaceChildren(stateBadge(op));
  // With the server's --trace-url-template, the trace id leads to the
  // trace viewer.
  const template = state.caller?.traceUrlTemplate;
  const trace = $("detail-meta").querySelector('[data-fact="Trace"]');
  if (trace && template) {
    const href = template.replaceAll("{trace_id}", encodeURIComponent(meta.traceId));
    trace.replaceChildren(el("a", { href, id: "trace-link", target: "_blank", rel: "noopener", text: meta.traceId }));
  }
  const parent = $("detail-meta").querySelector('[data-fact="Batch"]');
  parent?.replaceChildren(el("a", { href: `#/${meta.parent}`, text: shortId(meta.parent ?? "") }));
  const children = $("detail-meta").querySelector('[data-fact="Children"]');
  if (children) {
    const list = `#/operations?${new URLSearchParams({ parent: op.name })}`;
    children.append(" · ", el("a", { href: list, id: "children-link", text: "list them" }));
  }
}

// A batch's counts: "120 of 200 done: 118 succeeded, 2 failed; 80 waiting".
function childrenText(batch) {
  if (!batch) return "";
  const n = (key) => Number(batch[key] ?? 0);
  const done = n("succeeded") + n("failed") + n("cancelled");
  const parts = [`${n("succeeded")} succeeded`];
  if (n("failed")) parts.push(`${n("failed")} failed`);
  if (n("cancelled")) parts.push(`${n("cancelled")} cancelled`);
  const open = [];
  if (n("running")) open.push(`${n("running")} running`);
  if (n("queued")) open.push(`${n("queued")} queued`);
  if (n("cancelling")) open.push(`${n("cancelling")} cancelling`);
  const sealed = batch.sealed ? "" : " (still being added)";
  return `${done} of ${n("total")} done${sealed}: ${parts.join(", ")}${open.length ? `; ${open.join(", ")}` : ""}`;
}

// Whether a client may put it back in the queue: a failed or cancelled
// operation that is not a batch.
function retryable(op) {
  const meta = op.metadata ?? {};
  return op.done && ["FAILED", "CANCELLED"].includes(meta.state) && !meta.batch;
}

// What it was asked to do: the create request, as JSON (trimmed), or its
// size when it was too large to keep.
const REQUEST_SHOWN = 4000;
function renderRequest(meta) {
  const box = $("detail-request");
  if (meta.request) {
    let text = JSON.stringify(meta.request, null, 2);
    if (text.length > REQUEST_SHOWN) text = `${text.slice(0, REQUEST_SHOWN)}\n… (trimmed)`;
    return box.replaceChildren(el("pre", { text }));
  }
  const size = Number(meta.requestSizeBytes ?? 0);
  box.replaceChildren(el("p", { class: "muted", text: size > 0 ? `${size} bytes, too large to show.` : "Not recorded." }));
}

function renderDetail(op) {
  state.detail = op;
  const meta = op.metadata ?? {};
  const percent = percentOf(op);
  const bar = $("detail-bar");
  bar.style.width = `${percent}%`;
  bar.parentElement.className = `progress big ${stateClass(op)}`;
  bar.parentElement.setAttribute("aria-valuenow", String(percent));
  renderFacts(op);
  renderRequest(meta);
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
  $("retry").disabled = !retryable(op);
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
  const deliveries = page.deliveries ?? [];
  $("deliveries").replaceChildren(
    ...deliveries.map((d) =>
      el("tr", {}, el("td", { text: d.type ?? "" }), el("td", { text: d.state ?? "" }), el("td", { text: String(d.attempts ?? 0) }), el("td", { text: String(d.lastStatusCode ?? "") }), el("td", { text: d.lastError ?? "" })),
    ),
  );
  if (!deliveries.length) {
    $("deliveries").append(el("tr", { class: "none" }, el("td", { colspan: "5", class: "muted", text: "none" })));
  }
}

$("back").addEventListener("click", () => go(state.listHash));

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

$("retry").addEventListener("click", async () => {
  const name = state.detail?.name;
  if (!name) return;
  try {
    await call("POST", `/v1/${name}:retry`, {});
    say("Put back in the queue as its next attempt.");
    // Its stream ended with it: follow it again.
    openDetail(name);
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
    // The deleted operation's page is gone: replace it in the history.
    location.replace(state.listHash);
  } catch (error) {
    say(error.message, true);
  }
});

// ---- many at once ----

// What the selection bar offers: the ticked rows, or (ticked) every
// operation the filter matches, as one bulk operation.
function showSelection() {
  $("selection").hidden = !canWrite();
  const matching = $("select-matching").checked;
  const n = state.selected.size;
  $("selected").textContent = matching
    ? `Every operation matching ${state.filter || "everything"}`
    : n
      ? `${n} selected`
      : "None selected";
  for (const id of ["bulk-cancel", "bulk-retry", "bulk-delete"]) $(id).disabled = !matching && n === 0;
  $("select-page").checked = n > 0 && n === state.rows.size;
}

$("select-page").addEventListener("change", () => {
  const all = $("select-page").checked;
  state.selected.clear();
  for (const [name, tr] of state.rows) {
    const box = tr.querySelector(".pick input");
    box.checked = all;
    if (all) state.selected.add(name);
  }
  showSelection();
});
$("select-matching").addEventListener("change", showSelection);

const ACTIONS = {
  cancel: { verb: "Cancel", one: (name) => call("POST", `/v1/${name}:cancel`, {}), many: "cancelMatching" },
  retry: { verb: "Retry", one: (name) => call("POST", `/v1/${name}:retry`, {}), many: "retryMatching" },
  delete: { verb: "Delete", one: (name) => call("DELETE", `/v1/${name}`), many: "deleteMatching" },
};

async function actOnSelection(action) {
  const { verb, one, many } = ACTIONS[action];
  if ($("select-matching").checked) {
    if (!state.filter) return say("Choose a filter first: a bulk action needs one.", true);
    if (!confirm(`${verb} every operation matching ${state.filter}?`)) return;
    try {
      const op = await call("POST", `/v1/operations:${many}`, { filter: state.filter });
      followBulk(op, `${verb} matching`);
    } catch (error) {
      say(error.message, true);
    }
    return;
  }
  const names = [...state.selected];
  if (!confirm(`${verb} ${names.length} operation${names.length === 1 ? "" : "s"}?`)) return;
  const results = await Promise.allSettled(names.map(one));
  const failed = results.filter((r) => r.status === "rejected");
  say(
    failed.length ? `${verb}: ${names.length - failed.length} done, ${failed.length} refused (${failed[0].reason.message})` : `${verb}: ${names.length} done.`,
    failed.length > 0,
  );
  listOperations();
}

for (const action of Object.keys(ACTIONS)) $(`bulk-${action}`).addEventListener("click", () => actOnSelection(action));

// A bulk operation's own progress bar, live until it ends.
async function followBulk(op, title) {
  state.bulkLive?.abort();
  const controller = new AbortController();
  state.bulkLive = controller;
  $("bulk").hidden = false;
  $("bulk-title").textContent = title;
  $("bulk-link").textContent = shortId(op.name);
  $("bulk-link").href = `#/${op.name}`;
  const draw = (op) => {
    const percent = percentOf(op);
    $("bulk-bar").style.width = `${percent}%`;
    $("bulk-bar").parentElement.className = `progress big ${stateClass(op)}`;
    $("bulk-bar").parentElement.setAttribute("aria-valuenow", String(percent));
    const r = op.response;
    $("bulk-message").textContent = r
      ? `done: ${r.matched ?? 0} matched, ${r.changed ?? 0} changed, ${r.skipped ?? 0} skipped`
      : op.error
        ? `failed: ${op.error.message}`
        : op.metadata?.statusMessage ?? "";
  };
  draw(op);
  try {
    for await (const message of events(`/v1/${op.name}:watch`, controller.signal)) {
      if (message.event === "error") break;
      draw(message.data);
    }
  } catch {
    // The stream ended with the operation; what is shown stays.
  }
}

// ---- failures of the last day ----

const FAILED_PAGES = 10;

async function loadFailed() {
  const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  const filter = `state = FAILED AND update_time >= ${JSON.stringify(since)}`;
  const kinds = new Map();
  let token = "";
  let more = false;
  try {
    for (let page = 0; page < FAILED_PAGES; page++) {
      const query = new URLSearchParams({ filter, page_size: 1000 });
      if (token) query.set("page_token", token);
      const answer = await call("GET", `/v1/operations?${query}`);
      for (const op of answer.operations ?? []) {
        const kind = op.metadata?.kind ?? "";
        const entry = kinds.get(kind) ?? { kind, count: 0, latest: op };
        entry.count += 1;
        kinds.set(kind, entry);
      }
      token = answer.nextPageToken ?? "";
      if (!token) break;
      more = page === FAILED_PAGES - 1;
    }
  } catch (error) {
    return say(error.message, true);
  }
  say("");
  const cell = (label, ...children) => el("td", { "data-label": label }, ...children);
  $("failed-rows").replaceChildren(
    ...[...kinds.values()].sort((a, b) => b.count - a.count).map((entry) => {
      const list = `#/operations?${new URLSearchParams({ state: "FAILED", kind: entry.kind })}`;
      const actions = [el("a", { href: list, text: "Show" })];
      if (canWrite()) {
        const retry = el("button", { type: "button", class: "failed-retry", text: "Retry all" });
        retry.addEventListener("click", async () => {
          if (!confirm(`Retry every ${entry.kind} that failed in the last 24 hours?`)) return;
          try {
            const op = await call("POST", "/v1/operations:retryMatching", {
              filter: `${filter} AND kind = ${JSON.stringify(entry.kind)}`,
            });
            followBulk(op, `Retry ${entry.kind}`);
          } catch (error) {
            say(error.message, true);
          }
        });
        actions.push(" ", retry);
      }
      return el(
        "tr",
        { "data-kind": entry.kind },
        cell("Kind", entry.kind),
        cell("Failed (24 h)", `${entry.count}${more ? "+" : ""}`),
        cell("Latest failure", when(entry.latest.metadata?.endTime)),
        cell("Latest error", entry.latest.error?.message ?? ""),
        cell("Actions", ...actions),
      );
    }),
  );
  $("failed-empty").hidden = kinds.size > 0;
}

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

// A queue's state, and for an admin the button that flips it: a paused
// queue accepts operations and starts none.
function queueState(q) {
  const badge = el("span", { class: q.paused ? "badge paused" : "badge", text: q.paused ? "paused" : "active" });
  if (state.caller?.role !== "admin") return [badge];
  const action = q.paused ? "resume" : "pause";
  const button = el("button", { type: "button", class: "queue-action", "data-action": action, text: q.paused ? "Resume" : "Pause" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await call("POST", `/v1/queues/${encodeURIComponent(q.kind)}:${action}`, {});
      say(`${q.kind} ${q.paused ? "resumed: its backlog starts now" : "paused: its operations wait"}.`);
    } catch (error) {
      say(error.message, true);
    }
    loadQueues();
  });
  return [badge, " ", button];
}

// A kind's limits and their use: "key: 2 at once, 10/s (3 keys at their
// limit: acme 2, globex 2, initech 2)", the busiest three named.
function limitsText(q) {
  return (q.limits ?? []).map((used) => {
    const limit = used.limit ?? {};
    const parts = [];
    if (Number(limit.concurrency ?? 0) > 0) parts.push(`${limit.concurrency} at once`);
    parts.push(...(limit.rates ?? []));
    const atLimit = Number(used.atLimit ?? 0);
    let use;
    if (limit.scope === "kind") {
      const tokens = (used.tokens ?? []).map((t, i) => `${Math.floor(t)} of ${limit.rates?.[i]} left`);
      use = [`${atLimit} running`, ...tokens].join(", ");
    } else {
      const busiest = (used.busiest ?? []).slice(0, 3).map((b) => `${b.key || "default"} ${b.running}`);
      const some = atLimit === 1 ? `1 ${limit.scope} at its limit` : `${atLimit} ${limit.scope}s at their limit`;
      use = `${some}${busiest.length ? `: ${busiest.join(", ")}` : ""}`;
    }
    return `${limit.scope}: ${parts.join(", ")} (${use})`;
  });
}

async function loadQueues() {
  let stats;
  try {
    stats = await call("GET", "/v1/queues");
  } catch (error) {
    return say(error.message, true);
  }
  say("");
  // Each cell carries its column's name, which a phone shows beside it.
  const cell = (label, ...children) => el("td", { "data-label": label }, ...children);
  $("queue-rows").replaceChildren(
    ...(stats.kinds ?? []).map((q) => {
      const limit = Number(q.concurrency ?? 0);
      return el(
        "tr",
        { "data-kind": q.kind },
        cell("Kind", q.kind),
        cell("Queued", String(q.queued ?? 0)),
        cell("Running / limit", `${q.running ?? 0} / ${limit > 0 ? limit : "workers"}`),
        cell("Cancelling", String(q.cancelling ?? 0)),
        cell("Oldest waiting", age(q.oldestQueuedTime)),
        cell("Finished per minute", sparkline(q.finishedPerMinute ?? [])),
        cell("Limits", ...limitsText(q).flatMap((text, i) => (i ? [el("br"), text] : [text]))),
        cell("State", ...queueState(q)),
      );
    }),
  );
  $("queues-empty").hidden = (stats.kinds ?? []).length > 0;
  $("counting-since").textContent = stats.countingSince
    ? `Finished per minute: the last 15 minutes of the node that answered, counted since it started (${when(stats.countingSince)}).`
    : "";
}

// ---- schedules ----

// A schedule's actions for a writer: pause or resume it, or run it now.
function scheduleActions(s) {
  const badge = el("span", { class: s.paused ? "badge paused" : "badge", text: s.paused ? "paused" : "active" });
  if (state.caller?.role === "reader") return [badge];
  const id = s.name.replace(/^schedules\//, "");
  const act = (action, label, done) => {
    const button = el("button", { type: "button", class: "schedule-action", "data-action": action, text: label });
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const answer = await call("POST", `/v1/schedules/${encodeURIComponent(id)}:${action}`, {});
        say(done(answer));
      } catch (error) {
        say(error.message, true);
      }
      loadSchedules();
    });
    return button;
  };
  const flip = s.paused
    ? act("resume", "Resume", () => `${id} resumed: it runs from its next tick.`)
    : act("pause", "Pause", () => `${id} paused: no ticks until it is resumed.`);
  const now = act("runNow", "Run now", (op) => `${id} runs now as ${op.name}.`);
  return [badge, " ", flip, " ", now];
}

// The last runs, newest first: each its tick, linked to the operation,
// with its state.
function recentRuns(s) {
  const runs = (s.recentRuns ?? []).slice(0, 5);
  if (!runs.length) return ["none yet"];
  return runs.flatMap((run, i) => {
    const link = el("a", { href: `#/${run.operation}`, text: when(run.scheduledTime) });
    const state = (run.state || "GONE").toLowerCase();
    const item = [link, " ", el("span", { class: `badge ${state}`, text: run.state || "gone" })];
    return i ? [el("br"), ...item] : item;
  });
}

async function loadSchedules() {
  let page;
  try {
    page = await call("GET", "/v1/schedules?pageSize=100");
  } catch (error) {
    return say(error.message, true);
  }
  // The page carries each schedule's last runs with their states.
  const schedules = page.schedules ?? [];
  say("");
  const cell = (label, ...children) => el("td", { "data-label": label }, ...children);
  $("schedule-rows").replaceChildren(
    ...schedules.map((s) => {
      const next = (s.nextRunTimes ?? []).map(when);
      const problem = s.lastError ? [el("br"), el("span", { class: "muted", text: `last tick: ${s.lastError.message}` })] : [];
      return el(
        "tr",
        { "data-schedule": s.name },
        cell("Schedule", s.name.replace(/^schedules\//, "")),
        cell("When", s.description ?? "", el("br"), el("span", { class: "muted", text: `overlap ${s.overlapPolicy ?? "SKIP"}` }), ...problem),
        cell("Kind", s.kind),
        cell("Next runs", ...(next.length ? next.flatMap((t, i) => (i ? [el("br"), t] : [t])) : ["-"])),
        cell("Last runs", ...recentRuns(s)),
        cell("State", ...scheduleActions(s)),
      );
    }),
  );
  $("schedules-empty").hidden = schedules.length > 0;
}

window.addEventListener("load", start);
