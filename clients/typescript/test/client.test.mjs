// The client against a real server, which the repository's test suite
// starts and names in LONGRUN_URL (http://host:port).
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { test } from "node:test";

import { Client, LongrunError, OperationFailed, verifyWebhook } from "../dist/index.js";

const client = new Client({ baseUrl: process.env.LONGRUN_URL ?? "http://127.0.0.1:50051" });

test("a result is awaited through the event stream", async () => {
  const op = await client.sleep("0.2s", { steps: 2 });
  assert.match(op.name, /^operations\//);
  const response = await op.result({ timeout: 30_000 });
  assert.equal(response["@type"], "type.googleapis.com/longrun.v1.SleepResponse");
  assert.equal(op.state, "SUCCEEDED");
  assert.equal(op.metadata.progressPercent, 100);
});

test("a failure rejects with its status and reason", async () => {
  const op = await client.sleep("0s", { failCode: 9 });
  await assert.rejects(op.result({ timeout: 30_000 }), (error) => {
    assert.ok(error instanceof OperationFailed);
    assert.equal(error.code, 9);
    assert.equal(error.reason, "REQUESTED_FAILURE");
    return true;
  });
});

test("an operation is resumed by name from a new client", async () => {
  const name = (await client.sleep("0.1s")).name;
  const again = new Client({ baseUrl: client.baseUrl });
  const op = await again.operation(name);
  await op.result({ timeout: 30_000 });
  assert.equal(op.state, "SUCCEEDED");
});

test("watch follows progress to the end; cancel stops one", async () => {
  const op = await client.sleep("0.5s", { steps: 5 });
  const seen = [];
  for await (const state of op.watch()) seen.push(state.metadata.progressPercent ?? 0);
  assert.deepEqual(seen, [...seen].sort((a, b) => a - b));
  assert.equal(seen.at(-1), 100);
  const long = await client.sleep("600s", { steps: 600 });
  await long.cancel();
  await assert.rejects(long.result({ timeout: 30_000 }), (error) => error instanceof OperationFailed && error.code === 1);
  assert.equal(long.state, "CANCELLED");
});

test("list pages through every match", async () => {
  const names = new Set();
  for (let i = 0; i < 5; i++) names.add((await client.sleep("0s")).name);
  const listed = new Set();
  for await (const op of client.list("", 2)) listed.add(op.name);
  for (const name of names) assert.ok(listed.has(name), name);
});

test("a refused call names its reason; a repeated create is the same operation", async () => {
  await assert.rejects(client.operation("operations/nope"), (error) => {
    assert.ok(error instanceof LongrunError);
    assert.equal(error.httpStatus, 400);
    assert.equal(error.reason, "INVALID_ARGUMENT");
    return true;
  });
  const key = "6f1c2b0e-8a7d-4c1e-9f3a-2b5d7e9c1a42";
  const first = await client.sleep("0s", {}, key);
  const again = await client.sleep("0s", {}, key);
  assert.equal(first.name, again.name);
});

test("a webhook is verified and a forgery refused", async () => {
  const key = Buffer.alloc(32, 7);
  const secret = `whsec_${key.toString("base64")}`;
  const body = '{"type":"operation.succeeded"}';
  const stamp = String(Math.floor(Date.now() / 1000));
  const signature = createHmac("sha256", key).update(`msg_1.${stamp}.${body}`).digest("base64");
  const headers = { "webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": `v1,${signature}` };
  assert.deepEqual(await verifyWebhook(secret, headers, body), { type: "operation.succeeded" });
  await assert.rejects(verifyWebhook(secret, headers, `${body} `));
});
