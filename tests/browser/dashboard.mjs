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
import { mkdirSync } from "node:fs";

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
  await page.screenshot({ path: `${shots}/operations-1280x800.png` });

  step("cancel from the page");
  const long = await sleepOp(open, "60s", 60);
  await page.click(`tr[data-name="${long.name}"]`);
  await page.waitForSelector("#detail:not([hidden])");
  await page.waitForSelector('#detail-meta [data-fact="State"] .badge.running');
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("#cancel");
  await page.waitForSelector('#detail-meta [data-fact="State"] .badge.cancelled');
  await page.waitForSelector("#attempts li.failed");
  await page.screenshot({ path: `${shots}/detail-1280x800.png` });

  step("filter by state");
  await page.click("#back");
  await page.waitForSelector("#operations:not([hidden])");
  await page.selectOption("#filter-state", "CANCELLED");
  await page.click("#filters button[type=submit]");
  await page.waitForFunction((names) => {
    const rows = [...document.querySelectorAll("#rows tr")].map((r) => r.dataset.name);
    return rows.length === 1 && rows[0] === names.long;
  }, { long: long.name });
  await page.selectOption("#filter-state", "SUCCEEDED");
  await page.click("#filters button[type=submit]");
  await page.waitForFunction((names) => {
    const rows = [...document.querySelectorAll("#rows tr")].map((r) => r.dataset.name);
    return rows.length === 2 && rows.includes(names.quick) && rows.includes(names.slow);
  }, { quick: quick.name, slow: slow.name });

  step("the queues, with their throughput");
  await page.click('.tab[data-view="queues"]');
  await page.waitForSelector('#queue-rows tr[data-kind="longrun.v1.Diagnostics.Sleep"] svg.spark');

  step("a phone's width");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('.tab[data-view="operations"]');
  await page.waitForSelector("#rows tr");
  await page.screenshot({ path: `${shots}/operations-390x844.png`, fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 2) throw new Error(`the page is ${overflow}px wider than a phone`);

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
  const stored = await guarded.evaluate(() => [sessionStorage.getItem("longrun.token"), document.cookie]);
  if (stored[0] !== readerToken || stored[1] !== "") throw new Error("the token is not kept for the tab alone");
  step("a reader sees no buttons it may not use");
  await guarded.click(`tr[data-name="${theirs.name}"]`);
  await guarded.waitForSelector("#detail:not([hidden])");
  if (await guarded.isVisible("#cancel")) throw new Error("a reader is shown Cancel");
  if (await guarded.isVisible("#delete")) throw new Error("a reader is shown Delete");
  await api(secured, "POST", `/v1/${theirs.name}:cancel`, {}, writerToken);

  if (problems.length) throw new Error(`the page reported errors: ${problems.join("; ")}`);
  console.log("all steps passed");
} catch (error) {
  console.error(`FAILED: ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
