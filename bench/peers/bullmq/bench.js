// The BullMQ side of longrun's comparison: the same workloads on Redis.
//
//   node bench.js --count 20000 --concurrency 32
//
// Uses REDIS_URL, or starts redis-server on a free port in a temporary
// directory (and stops it afterwards). --appendfsync always turns on the
// append-only file with an fsync of every write, the same durability as
// longrun's default --sync always; --appendfsync everysec flushes once a
// second. Prints one JSON object.
//
// Phases: (1) add N jobs with C producers; (2) process that backlog with a
// worker of concurrency C; (3) add N more while the worker processes them,
// until all are done (longrun's "create N, until all N done"); (4) C
// clients that each add a job and wait for it, as callers of an HTTP 202
// API over BullMQ would.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Queue, Worker, QueueEvents } from "bullmq";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const count = Number(arg("count", "20000"));
const concurrency = Number(arg("concurrency", "32"));
const appendfsync = arg("appendfsync", "");

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

async function startRedis() {
  if (process.env.REDIS_URL) {
    const url = new URL(process.env.REDIS_URL);
    return { connection: { host: url.hostname, port: Number(url.port || 6379) }, stop: async () => {} };
  }
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "bullmq-bench-"));
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", ""];
  if (appendfsync) {
    args.push("--appendonly", "yes", "--appendfsync", appendfsync);
  } else {
    args.push("--appendonly", "no");
  }
  const redis = spawn("redis-server", args, { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise((resolve, reject) => {
    redis.stdout.on("data", (chunk) => {
      if (String(chunk).includes("Ready to accept connections")) resolve();
    });
    redis.on("exit", (code) => reject(new Error(`redis-server exited with ${code}`)));
  });
  return {
    connection: { host: "127.0.0.1", port },
    stop: async () => {
      redis.kill("SIGTERM");
      await new Promise((resolve) => redis.on("exit", resolve));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function main() {
  const redis = await startRedis();
  const connection = redis.connection;
  const name = `bench-${Date.now()}`;
  const queue = new Queue(name, { connection });
  // waitUntilFinished adds a listener per job in flight.
  queue.setMaxListeners(0);
  await queue.waitUntilReady();

  // 1. Add N jobs with C concurrent producers.
  let next = 0;
  const addLatencies = [];
  const addStart = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        next += 1;
        const t = process.hrtime.bigint();
        await queue.add("noop", {}, { removeOnComplete: true, removeOnFail: true });
        addLatencies.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
    }),
  );
  const addSeconds = Number(process.hrtime.bigint() - addStart) / 1e9;

  // 2. Process them with a worker of concurrency C; add-to-start latency is
  // processedOn minus the job's timestamp.
  const startLatencies = [];
  let processed = 0;
  let resolveDone;
  const done = new Promise((resolve) => (resolveDone = resolve));
  const processStart = process.hrtime.bigint();
  const worker = new Worker(
    name,
    async (job) => {
      startLatencies.push(job.processedOn - job.timestamp);
      processed += 1;
      if (processed >= count) resolveDone();
    },
    { connection, concurrency },
  );
  await done;
  const processSeconds = Number(process.hrtime.bigint() - processStart) / 1e9;
  await worker.close();

  // 3. Add and process at once: the worker runs while N more are added;
  // the clock stops when the last is processed.
  let concurrentDone = 0;
  let resolveConcurrent;
  const concurrentFinished = new Promise((resolve) => (resolveConcurrent = resolve));
  const concurrentStart = process.hrtime.bigint();
  const busyWorker = new Worker(
    name,
    async () => {
      concurrentDone += 1;
      if (concurrentDone >= count) resolveConcurrent();
    },
    { connection, concurrency },
  );
  let added = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (added < count) {
        added += 1;
        await queue.add("noop", {}, { removeOnComplete: true, removeOnFail: true });
      }
    }),
  );
  await concurrentFinished;
  const concurrentSeconds = Number(process.hrtime.bigint() - concurrentStart) / 1e9;
  await busyWorker.close();

  // 4. End to end: add and wait for completion, C at a time, as clients of
  // an HTTP 202 API over BullMQ would.
  const events = new QueueEvents(name, { connection });
  events.setMaxListeners(0);
  await events.waitUntilReady();
  const worker2 = new Worker(name, async () => {}, { connection, concurrency });
  const e2eCount = Math.min(count, 5000);
  let started = 0;
  const e2eLatencies = [];
  const e2eStart = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (started < e2eCount) {
        started += 1;
        const t = process.hrtime.bigint();
        const job = await queue.add("noop", {}, { removeOnComplete: 1000, removeOnFail: 1000 });
        await job.waitUntilFinished(events);
        e2eLatencies.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
    }),
  );
  const e2eSeconds = Number(process.hrtime.bigint() - e2eStart) / 1e9;
  await worker2.close();
  await events.close();
  await queue.obliterate({ force: true });
  await queue.close();
  await redis.stop();

  addLatencies.sort((a, b) => a - b);
  startLatencies.sort((a, b) => a - b);
  e2eLatencies.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      peer: "bullmq",
      redis_appendfsync: appendfsync || "off (default: no AOF)",
      count,
      concurrency,
      add_per_second: count / addSeconds,
      add_p50_ms: percentile(addLatencies, 0.5),
      add_p99_ms: percentile(addLatencies, 0.99),
      process_per_second: count / processSeconds,
      add_then_process_per_second: count / (addSeconds + processSeconds),
      add_and_process_at_once_per_second: count / concurrentSeconds,
      start_latency_p50_ms: percentile(startLatencies, 0.5),
      start_latency_p99_ms: percentile(startLatencies, 0.99),
      e2e_per_second: e2eCount / e2eSeconds,
      e2e_p50_ms: percentile(e2eLatencies, 0.5),
      e2e_p99_ms: percentile(e2eLatencies, 0.99),
    }),
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
