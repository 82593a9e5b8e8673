// Drives the dashboard in a real Chromium (Debian's, through
// playwright-core) against real servers started by the Rust test
// (tests/it/dashboard.rs), which passes:
//   argv[2]  an open server's URL (no auth file)
//   argv[3]  a server with an auth file
//   argv[4]  a reader token of that server
//   argv[5]  a writer token of that server
//   argv[6]  where to write screenshots
// Every step waits on what the page shows, with a timeout; nothing sleeps.
// Exits non-zero with the failing step's message.

import { chromium } from "playwright-core";
import { existsSync, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";

const [open, secured, readerToken, writerToken, shots] = process.argv.slice(2);
const executablePath = process.env.LONGRUN_CHROMIUM ?? "/usr/bin/chromium";
const TIMEOUT = 30_000;

async function api(base, method, path, body, token) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: {
      "Content-Type": "application/json",
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

const sleepOp = (base, duration, steps, token) =>
  api(base, "POST", "/v1/diagnostics:sleep", { duration, steps }, token);

function step(name) {
  console.log(`step: ${name}`);
}

// Text that wraps onto a second line inside a badge or a header (which
// should never happen): the selectors whose text spans several lines.
function wrapped(page) {
  return page.evaluate(() => {
    const broken = [];
    for (const node of document.querySelectorAll(".badge, thead th")) {
      if (!node.offsetParent) continue;
      const range = document.createRange();
      range.selectNodeContents(node);
      const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
      if (lines.size > 1) broken.push(node.textContent);
    }
    return broken;
  });
}

// How much wider than the window the page is.
const overflowOf = (page) => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);

// The fill colour of an operation's bar in the list.
const barColour = (page, name) =>
  page.evaluate((name) => getComputedStyle(document.querySelector(`tr[data-name="${name}"] [role=progressbar] > div`)).backgroundColor, name);

const idOf = (name) => name.replace(/^operations\//, "");

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  mkdirSync(shots, { recursive: true });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on("pageerror", (error) => problems.push(error.message));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(message.text());
  });

  step("operations created through the API appear");
  await page.goto(open);
  await page.waitForSelector("#operations:not([hidden])");
  const quick = await sleepOp(open, "0s", 1);
  const slow = await sleepOp(open, "3s", 12);
  await page.waitForSelector(`tr[data-name="${quick.name}"]`);
  await page.waitForSelector(`tr[data-name="${slow.name}"]`);

  step("a progress bar moves and reaches done without a reload");
  const bar = `tr[data-name="${slow.name}"] [role=progressbar]`;
  await page.waitForFunction(
    (selector) => {
      const value = Number(document.querySelector(selector)?.getAttribute("aria-valuenow"));
      return value > 0 && value < 100;
    },
    bar,
  );
  await page.waitForSelector(`tr[data-name="${slow.name}"] .badge.succeeded`);
  const done = await page.getAttribute(bar, "aria-valuenow");
  if (done !== "100") throw new Error(`the finished bar shows ${done}`);

  step("a failed operation's bar is not a success's");
  const failed = await api(open, "POST", "/v1/diagnostics:sleep", { duration: "0s", steps: 1, failCode: 9 });
  await page.waitForSelector(`tr[data-name="${failed.name}"] .badge.failed`);
  const colours = { succeeded: await barColour(page, slow.name), failed: await barColour(page, failed.name) };
  if (colours.succeeded === colours.failed) throw new Error(`a failure's bar looks like a success's: ${JSON.stringify(colours)}`);

  step("no badge or header breaks inside a word at 1280x800");
  let broken = await wrapped(page);
  if (broken.length) throw new Error(`these wrap: ${broken.join(", ")}`);
  if (!(await page.isVisible("#tenant-filter"))) throw new Error("an open server's admin is not offered the tenant filter");
  await page.screenshot({ path: `${shots}/operations-1280x800.png` });

  step("one operation: its URL, its request, its durations, who runs it");
  const long = await sleepOp(open, "60s", 60);
  await page.click(`tr[data-name="${long.name}"]`);
  await page.waitForSelector("#detail:not([hidden])");
  await page.waitForSelector('#detail-meta [data-fact="State"] .badge.running');
  if (!page.url().endsWith(`#/operations/${idOf(long.name)}`)) throw new Error(`one operation's URL is ${page.url()}`);
  await page.waitForFunction(() => document.querySelector("#detail-request pre")?.textContent.includes('"duration": "60s"'));
  for (const fact of ["Runs on", "Queued for", "Ran for", "Estimated end"]) {
    await page.waitForSelector(`#detail-meta [data-fact="${fact}"]`);
  }
  const attempt = await page.textContent('#detail-meta [data-fact="Attempt"]');
  if (!/^1 \(1 of \d+ allowed\)$/.test(attempt)) throw new Error(`the attempt reads "${attempt}"`);
  const created = await page.textContent('#detail-meta [data-fact="Created"]');
  if (!/UTC|GMT|[+-]\d/.test(created)) throw new Error(`a time without its zone: "${created}"`);
  await page.waitForSelector("#deliveries tr.none");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${shots}/detail-390x844.png`, fullPage: true });
  if ((await overflowOf(page)) > 2) throw new Error("one operation's page is wider than a phone");
  await page.setViewportSize({ width: 1280, height: 800 });

  step("cancel from the page");
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("#cancel");
  await page.waitForSelector('#detail-meta [data-fact="State"] .badge.cancelled');
  await page.waitForSelector("#attempts li.failed");
  await page.screenshot({ path: `${shots}/detail-1280x800.png` });

  const cancelledBar = await page.evaluate(() => getComputedStyle(document.querySelector("#detail-bar")).backgroundColor);
  if (cancelledBar === colours.succeeded) throw new Error("a cancelled operation's bar looks like a success's");

  step("Back returns to the list; a filter has a URL that reloads");
  await page.goBack();
  await page.waitForSelector("#operations:not([hidden])");
  await page.selectOption("#filter-state", "CANCELLED");
  await page.click("#filters button[type=submit]");
  const onlyLong = (names) => {
    const rows = [...document.querySelectorAll("#rows tr")].map((r) => r.dataset.name);
    return rows.length === 1 && rows[0] === names.long;
  };
  await page.waitForFunction(onlyLong, { long: long.name });
  if (!page.url().includes("#/operations?state=CANCELLED")) throw new Error(`the filtered list's URL is ${page.url()}`);
  await page.reload();
  await page.waitForFunction(onlyLong, { long: long.name });
  if ((await page.inputValue("#filter-state")) !== "CANCELLED") throw new Error("a reload forgets the filter");
  await page.click(`tr[data-name="${long.name}"]`);
  await page.waitForSelector("#detail:not([hidden])");
  await page.click("#back");
  await page.waitForFunction(onlyLong, { long: long.name });
  if ((await page.inputValue("#filter-state")) !== "CANCELLED") throw new Error("the way back from one operation forgets the filter");
  await page.selectOption("#filter-state", "SUCCEEDED");
  await page.click("#filters button[type=submit]");
  await page.waitForFunction((names) => {
    const rows = [...document.querySelectorAll("#rows tr")].map((r) => r.dataset.name);
    return rows.length === 2 && rows.includes(names.quick) && rows.includes(names.slow);
  }, { quick: quick.name, slow: slow.name });

  step("the queues, with their throughput, at their own URL");
  await page.click('.tab[data-view="queues"]');
  const sleepQueue = '#queue-rows tr[data-kind="longrun.v1.Diagnostics.Sleep"] svg.spark';
  await page.waitForSelector(sleepQueue);
  if (!page.url().endsWith("#/queues")) throw new Error(`the queues' URL is ${page.url()}`);
  await page.waitForFunction(() => document.querySelector("#counting-since").textContent.includes("since it started"));
  await page.reload();
  await page.waitForSelector(sleepQueue);
  await page.screenshot({ path: `${shots}/queues-1280x800.png` });

  step("an admin pauses a queue: its work waits; resumed, it runs");
  const sleepRow = '#queue-rows tr[data-kind="longrun.v1.Diagnostics.Sleep"]';
  await page.click(`${sleepRow} button[data-action="pause"]`);
  await page.waitForSelector(`${sleepRow} .badge.paused`);
  const held = await sleepOp(open, "0s", 1);
  const queued = await api(open, "GET", `/v1/${held.name}`);
  if (queued.done) throw new Error("an operation of a paused kind ran");
  await page.click(`${sleepRow} button[data-action="resume"]`);
  await page.waitForSelector(`${sleepRow} button[data-action="pause"]`);
  await api(open, "POST", `/v1/${held.name}:wait`, { timeout: "30s" });

  step("a key's limit holds work back: the queue shows it, the operation says why it waits");
  await api(open, "POST", "/v1/queues/sleep:setLimit", { scope: "key", concurrency: 1 });
  const keyed = (duration) =>
    api(open, "POST", "/v1/diagnostics:sleep", { duration, steps: 1, run: { concurrencyKey: "acme" } });
  const holder = await keyed("60s");
  await page.goto(`${open}#/operations/${idOf(holder.name)}`);
  await page.waitForFunction(() => document.querySelector('#detail-meta [data-fact="State"]')?.textContent === "RUNNING");
  const waiter = await keyed("0s");
  await page.goto(`${open}#/operations/${idOf(waiter.name)}`);
  await page.waitForFunction(() =>
    document.querySelector('#detail-meta [data-fact="Waiting"]')?.textContent === "KEY_CONCURRENCY (key acme)");
  await page.goto(`${open}#/queues`);
  await page.waitForFunction(() =>
    document.querySelector(`#queue-rows tr[data-kind="longrun.v1.Diagnostics.Sleep"] td[data-label="Limits"]`)
      ?.textContent.includes("key: 1 at once (1 key at its limit: acme 1)"));
  await page.screenshot({ path: `${shots}/queues-limits-1280x800.png` });
  await api(open, "POST", `/v1/${holder.name}:cancel`, {});
  await api(open, "POST", `/v1/${waiter.name}:wait`, { timeout: "30s" });
  await api(open, "POST", "/v1/queues/sleep:deleteLimit", { scope: "key" });
  await page.goto(`${open}#/operations`);
  await page.waitForSelector("#operations:not([hidden])");

  step("the schedules: the clock in words, the next five times, Run now, the last runs");
  await api(open, "POST", "/v1/schedules?scheduleId=nightly", {
    kind: "sleep",
    payload: { "@type": "type.googleapis.com/longrun.v1.SleepRequest", duration: "0s" },
    cron: "0 3 * * *",
    timeZone: "Europe/Berlin",
  });
  await page.click('.tab[data-view="schedules"]');
  const nightly = '#schedule-rows tr[data-schedule="schedules/nightly"]';
  await page.waitForSelector(nightly);
  if (!page.url().endsWith("#/schedules")) throw new Error(`the schedules' URL is ${page.url()}`);
  const words = await page.textContent(`${nightly} td[data-label="When"]`);
  if (!words.includes("every day at 03:00 Europe/Berlin")) throw new Error(`the schedule in words: ${words}`);
  const nextTimes = await page.$$eval(`${nightly} td[data-label="Next runs"]`, (cells) => cells[0].innerText.split("\n").length);
  if (nextTimes !== 5) throw new Error(`${nextTimes} next times shown, not 5`);
  await page.click(`${nightly} button[data-action="runNow"]`);
  await page.waitForSelector(`${nightly} td[data-label="Last runs"] a`);
  await page.click(`${nightly} button[data-action="pause"]`);
  await page.waitForSelector(`${nightly} button[data-action="resume"]`);
  await page.screenshot({ path: `${shots}/schedules-1280x800.png` });
  await page.click(`${nightly} td[data-label="Last runs"] a`);
  await page.waitForSelector("#detail:not([hidden])");
  await page.goto(`${open}#/operations`);
  await page.waitForSelector("#operations:not([hidden])");

  step("a failed operation is retried from its page, its history kept");
  await page.goto(`${open}#/operations/${idOf(failed.name)}`);
  await page.waitForSelector('#detail-meta [data-fact="State"] .badge.failed');
  await page.click("#retry");
  await page.waitForFunction(() => document.querySelector('#detail-meta [data-fact="Attempt"]')?.textContent.startsWith("2 "));
  await page.waitForSelector('#detail-meta [data-fact="State"] .badge.failed');
  await page.waitForFunction(() => document.querySelectorAll("#attempts li.failed").length === 2);

  step("an operation's trace id leads to its trace");
  const traced = await fetch(`${open}/v1/diagnostics:sleep`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    },
    body: JSON.stringify({ duration: "0s" }),
  }).then((r) => r.json());
  await page.goto(`${open}#/operations/${idOf(traced.name)}`);
  await page.waitForSelector("#trace-link");
  const traceHref = await page.getAttribute("#trace-link", "href");
  if (traceHref !== "https://jaeger.example/trace/4bf92f3577b34da6a3ce929d0e0e4736") throw new Error(`the trace link is ${traceHref}`);
  await page.screenshot({ path: `${shots}/trace-1280x800.png` });

  step("a batch shows its children's counts and lists them");
  const batch = await api(open, "POST", "/v1/batches", {
    children: [0, 1, 2].map(() => ({
      kind: "longrun.v1.Diagnostics.Sleep",
      payload: { "@type": "type.googleapis.com/longrun.v1.SleepRequest", duration: "0s" },
    })),
  });
  await api(open, "POST", `/v1/${batch.name}:wait`, { timeout: "30s" });
  await page.goto(`${open}#/operations/${idOf(batch.name)}`);
  await page.waitForFunction(() =>
    document.querySelector('#detail-meta [data-fact="Children"]')?.textContent.startsWith("3 of 3 done: 3 succeeded"));
  await page.click("#children-link");
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length === 3);
  if ((await page.inputValue("#filter-parent")) !== batch.name) throw new Error("the children's list is not filtered by their batch");
  await page.screenshot({ path: `${shots}/batch-children-1280x800.png` });

  step("the failures of the last day, by kind, retried at once as a bulk operation");
  await page.click('.tab[data-view="failed"]');
  const failedSleeps = '#failed-rows tr[data-kind="longrun.v1.Diagnostics.Sleep"]';
  await page.waitForSelector(failedSleeps);
  if (!page.url().endsWith("#/failed")) throw new Error(`the failures' URL is ${page.url()}`);
  page.once("dialog", (dialog) => dialog.accept());
  await page.click(`${failedSleeps} button.failed-retry`);
  await page.waitForFunction(() => document.querySelector("#bulk-message")?.textContent.startsWith("done: 1 matched, 1 changed"));
  await page.screenshot({ path: `${shots}/failed-1280x800.png` });

  step("many at once: every operation a filter matches, deleted as one bulk operation");
  await api(open, "POST", `/v1/${failed.name}:wait`, { timeout: "30s" });
  await page.goto(`${open}#/operations?state=FAILED`);
  await page.waitForSelector(`tr[data-name="${failed.name}"]`);
  await page.click(`tr[data-name="${failed.name}"] .pick input`);
  await page.waitForFunction(() => document.querySelector("#selected").textContent === "1 selected");
  await page.check("#select-matching");
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("#bulk-delete");
  await page.waitForFunction(() => document.querySelector("#bulk-message")?.textContent.startsWith("done: 1 matched, 1 changed"));
  await page.waitForSelector(`tr[data-name="${failed.name}"]`, { state: "detached" });
  await page.screenshot({ path: `${shots}/bulk-1280x800.png` });
  await page.goto(`${open}#/operations`);
  await page.waitForSelector("#operations:not([hidden])");

  // The TypeScript client, served to the page by the harness, against the
  // server the page came from (when it has been built).
  const clientScript = fileURLToPath(new URL("../../clients/typescript/dist/index.js", import.meta.url));
  if (existsSync(clientScript)) {
    step("the TypeScript client runs in the browser");
    await page.route("**/test-client/index.js", (route) => route.fulfill({ path: clientScript, contentType: "text/javascript" }));
    const [clientState, clientType] = await page.evaluate(async () => {
      const { Client } = await import("/test-client/index.js");
      const client = new Client({ baseUrl: location.origin });
      const op = await client.sleep("0.2s", { steps: 2 });
      const response = await op.result({ timeout: 30000 });
      return [op.state, response["@type"]];
    });
    if (clientState !== "SUCCEEDED" || !clientType.endsWith("SleepResponse")) {
      throw new Error(`the TypeScript client in the browser saw ${clientState} ${clientType}`);
    }
  } else if (process.env.LONGRUN_TEST_CLIENTS_REQUIRED === "1") {
    throw new Error("clients/typescript is not built, and LONGRUN_TEST_CLIENTS_REQUIRED=1");
  }

  step("a phone's width: nothing wider than the screen, no word broken");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForSelector("#rows tr");
  await page.screenshot({ path: `${shots}/operations-390x844.png`, fullPage: true });
  let overflow = await overflowOf(page);
  if (overflow > 2) throw new Error(`the list is ${overflow}px wider than a phone`);
  broken = await wrapped(page);
  if (broken.length) throw new Error(`these wrap on a phone: ${broken.join(", ")}`);
  await page.click('.tab[data-view="queues"]');
  await page.waitForSelector(sleepQueue);
  await page.screenshot({ path: `${shots}/queues-390x844.png`, fullPage: true });
  overflow = await overflowOf(page);
  if (overflow > 2) throw new Error(`the queues are ${overflow}px wider than a phone`);
  const label = await page.evaluate(() => {
    const cell = document.querySelector('#queue-rows tr[data-kind="longrun.v1.Diagnostics.Sleep"] td[data-label="Queued"]');
    return getComputedStyle(cell, "::before").content;
  });
  if (!label.includes("Queued")) throw new Error(`a phone's queue card does not name its values: ${label}`);

  step("the token prompt of an authenticated server");
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const guarded = await context.newPage();
  guarded.setDefaultTimeout(TIMEOUT);
  const theirs = await sleepOp(secured, "60s", 1, writerToken);
  await guarded.goto(secured);
  await guarded.waitForSelector("#login:not([hidden])");
  await guarded.screenshot({ path: `${shots}/login-1280x800.png` });
  await guarded.fill("#token", "lr_wrong");
  await guarded.click("#login-form button[type=submit]");
  await guarded.waitForFunction(() => document.querySelector("#login-error").textContent.length > 0);
  await guarded.fill("#token", readerToken);
  await guarded.click("#login-form button[type=submit]");
  await guarded.waitForSelector(`tr[data-name="${theirs.name}"]`);
  if (await guarded.isVisible("#tenant-filter")) throw new Error("a reader of one tenant is offered the tenant filter");
  const stored = await guarded.evaluate(() => [sessionStorage.getItem("longrun.token"), document.cookie]);
  if (stored[0] !== readerToken || stored[1] !== "") throw new Error("the token is not kept for the tab alone");
  step("a reader sees no buttons it may not use");
  await guarded.click(`tr[data-name="${theirs.name}"]`);
  await guarded.waitForSelector("#detail:not([hidden])");
  if (await guarded.isVisible("#cancel")) throw new Error("a reader is shown Cancel");
  if (await guarded.isVisible("#delete")) throw new Error("a reader is shown Delete");
  if (await guarded.isVisible("#retry")) throw new Error("a reader is shown Retry");
  await guarded.goBack();
  await guarded.waitForSelector("#operations:not([hidden])");
  if (await guarded.isVisible("#selection")) throw new Error("a reader is offered bulk actions");
  await guarded.click('.tab[data-view="queues"]');
  await guarded.waitForSelector("#queue-rows tr");
  if ((await guarded.$$(".queue-action")).length) throw new Error("a reader is offered Pause");
  await guarded.click('.tab[data-view="schedules"]');
  await guarded.waitForSelector("#schedules:not([hidden])");
  if ((await guarded.$$(".schedule-action")).length) throw new Error("a reader is offered Run now");
  await api(secured, "POST", `/v1/${theirs.name}:cancel`, {}, writerToken);

  if (problems.length) throw new Error(`the page reported errors: ${problems.join("; ")}`);
  console.log("all steps passed");
} catch (error) {
  console.error(`FAILED: ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
