// @longrun/client: longrun's HTTP/JSON API, typed from its OpenAPI
// document (src/api.d.ts, generated at build time). It needs only fetch
// and Web Crypto, so it runs in Node 18+, Deno and browsers.
//
//   const client = new Client({ baseUrl: "http://127.0.0.1:50051" });
//   const op = await client.sleep("2s");
//   const response = await op.result({ timeout: 30_000 });

import type { components } from "./api.js";

type Schemas = components["schemas"];
export type OperationJson = Schemas["google.longrunning.Operation"];
export type SleepRequest = Schemas["longrun.v1.SleepRequest"];
export type EnqueueRequest = Schemas["longrun.v1.EnqueueRequest"];
export type CreateReportRequest = Schemas["longrun.v1.CreateReportRequest"];
export type ListOperationsResponse = Schemas["google.longrunning.ListOperationsResponse"];
export type RpcStatus = Schemas["google.rpc.Status"];

/** The OperationMetadata every operation carries (its `metadata`). */
export interface OperationMetadata {
  "@type": string;
  state?: "QUEUED" | "RUNNING" | "SUCCEEDED" | "FAILED" | "CANCELLING" | "CANCELLED";
  progressPercent?: number;
  statusMessage?: string;
  kind?: string;
  attempt?: number;
  maxAttempts?: number;
  createTime?: string;
  startTime?: string;
  endTime?: string;
  estimatedEndTime?: string;
  tenant?: string;
  traceId?: string;
  parent?: string;
  [field: string]: unknown;
}

/** A refused call or a failed operation: the google.rpc code, message,
 * ErrorInfo reason and details, and the HTTP status when there was one. */
export class LongrunError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly details: Array<Record<string, unknown>>;
  readonly httpStatus?: number;

  constructor(status: { code?: number; message?: string; details?: Array<Record<string, unknown>> }, httpStatus?: number) {
    super(status.message ?? `HTTP ${httpStatus}`);
    this.name = "LongrunError";
    this.code = status.code ?? 0;
    this.details = status.details ?? [];
    const info = this.details.find((d) => String(d["@type"]).endsWith("google.rpc.ErrorInfo"));
    this.reason = typeof info?.["reason"] === "string" ? info["reason"] : "";
    this.httpStatus = httpStatus;
  }
}

/** The operation ended with an error. */
export class OperationFailed extends LongrunError {
  readonly operation: Operation;

  constructor(operation: Operation, status: RpcStatus) {
    super(status as { code?: number; message?: string; details?: Array<Record<string, unknown>> });
    this.name = "OperationFailed";
    this.operation = operation;
  }
}

export interface ClientOptions {
  /** The server, e.g. http://127.0.0.1:50051. */
  baseUrl: string;
  /** A bearer token. */
  token?: string;
  /** Another fetch (a test's, or one with a proxy). */
  fetch?: typeof fetch;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });

/** A connection to a longrun server's HTTP/JSON face. */
export class Client {
  readonly baseUrl: string;
  private readonly token?: string;
  private readonly fetcher: typeof fetch;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.token = options.token;
    this.fetcher = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** @internal */
  headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.token ? { ...extra, authorization: `Bearer ${this.token}` } : extra;
  }

  /** @internal One call; a refusal becomes a LongrunError. */
  async call<T>(method: string, path: string, body?: unknown, extra: Record<string, string> = {}): Promise<{ json: T; response: Response }> {
    const response = await this.fetcher(`${this.baseUrl}${path}`, {
      method,
      headers: this.headers(body === undefined ? extra : { ...extra, "content-type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    const json = text ? JSON.parse(text) : {};
    if (!response.ok) {
      throw new LongrunError(json.error ?? { message: text }, response.status);
    }
    return { json: json as T, response };
  }

  /** A create: an Idempotency-Key (a fresh UUID unless given) makes the
   * library's own retry of an unavailable server safe. */
  private async create(path: string, body: unknown, requestId?: string): Promise<Operation> {
    const key = requestId ?? crypto.randomUUID();
    for (let attempt = 0; ; attempt++) {
      try {
        const { json } = await this.call<OperationJson>("POST", path, body, { "idempotency-key": key });
        return new Operation(this, json);
      } catch (error) {
        if (error instanceof LongrunError && error.httpStatus === 503 && attempt < 3) {
          await sleep(200 * 2 ** attempt);
          continue;
        }
        throw error;
      }
    }
  }

  /** A Diagnostics.Sleep of known length, e.g. "2s". */
  sleep(duration: string, request: Omit<SleepRequest, "duration"> = {}, requestId?: string): Promise<Operation> {
    return this.create("/v1/diagnostics:sleep", { ...request, duration }, requestId);
  }

  /** An operation of an outside kind; `payload` is a JSON Any. */
  enqueue(kind: string, payload: Record<string, unknown> & { "@type": string }, request: Omit<EnqueueRequest, "kind" | "payload"> = {}, requestId?: string): Promise<Operation> {
    return this.create("/v1/jobs:enqueue", { ...request, kind, payload }, requestId);
  }

  /** A monthly report (YYYY-MM) as CSV, JSON or PDF. */
  createReport(request: CreateReportRequest, requestId?: string): Promise<Operation> {
    return this.create("/v1/reports", request, requestId);
  }

  /** An operation by name, to come back to it (after a restart, say). */
  async operation(name: string): Promise<Operation> {
    const { json } = await this.call<OperationJson>("GET", `/v1/${name}`);
    return new Operation(this, json);
  }

  /** Every operation the filter matches, newest first, page after page. */
  async *list(filter = "", pageSize = 100): AsyncGenerator<Operation> {
    let token = "";
    for (;;) {
      const query = new URLSearchParams({ page_size: String(pageSize) });
      if (filter) query.set("filter", filter);
      if (token) query.set("page_token", token);
      const { json } = await this.call<ListOperationsResponse>("GET", `/v1/operations?${query}`);
      for (const op of json.operations ?? []) yield new Operation(this, op);
      token = json.nextPageToken ?? "";
      if (!token) return;
    }
  }
}

export interface ResultOptions {
  /** Give up after this many milliseconds (TimeoutError). */
  timeout?: number;
  signal?: AbortSignal;
}

/** One operation: its latest known state, and ways to follow it. */
export class Operation {
  private json: OperationJson;

  constructor(private readonly client: Client, json: OperationJson) {
    this.json = json;
  }

  get name(): string {
    return this.json.name ?? "";
  }
  get done(): boolean {
    return this.json.done === true;
  }
  get metadata(): OperationMetadata {
    return (this.json.metadata ?? { "@type": "" }) as OperationMetadata;
  }
  get state(): OperationMetadata["state"] {
    return this.metadata.state;
  }
  get estimatedEndTime(): Date | undefined {
    const at = this.metadata.estimatedEndTime;
    return at ? new Date(at) : undefined;
  }
  /** The operation as the server sent it. */
  get raw(): OperationJson {
    return this.json;
  }

  /** Reads its state again. */
  async refresh(): Promise<this> {
    this.json = (await this.client.call<OperationJson>("GET", `/v1/${this.name}`)).json;
    return this;
  }

  /** Its states as they change, over the `:watch` event stream; a stream
   * that breaks is opened again with Last-Event-ID, so nothing is missed. */
  async *watch(signal?: AbortSignal): AsyncGenerator<Operation> {
    let lastId: string | undefined;
    for (let broken = 0; !this.done; ) {
      try {
        const headers = this.client.headers({ accept: "text/event-stream", ...(lastId ? { "last-event-id": lastId } : {}) });
        const response = await fetch(`${this.client.baseUrl}/v1/${this.name}:watch`, { headers, signal });
        if (!response.ok || !response.body) {
          const body = await response.json().catch(() => ({}));
          throw new LongrunError(body.error ?? {}, response.status);
        }
        for await (const event of events(response.body)) {
          broken = 0;
          if (event.id) lastId = event.id;
          if (event.event === "error") throw new LongrunError(JSON.parse(event.data).error ?? {});
          this.json = JSON.parse(event.data) as OperationJson;
          yield this;
          if (this.done) return;
        }
      } catch (error) {
        if (signal?.aborted || error instanceof LongrunError || ++broken > 8) throw error;
        await sleep(Math.min(200 * 2 ** broken, 5000), signal);
      }
    }
  }

  /** Waits until it is done (the event stream; polling with Retry-After
   * if streams are refused) and returns its response; OperationFailed
   * when it failed. */
  async result(options: ResultOptions = {}): Promise<unknown> {
    const controller = new AbortController();
    const timer = options.timeout === undefined ? undefined : setTimeout(() => controller.abort(new Error("timeout")), options.timeout);
    options.signal?.addEventListener("abort", () => controller.abort(options.signal?.reason));
    try {
      try {
        for await (const _ of this.watch(controller.signal)) {
          // Each state is kept on the handle; only the last matters here.
        }
      } catch (error) {
        if (controller.signal.aborted) throw error;
        await this.poll(controller.signal);
      }
    } catch (error) {
      if (controller.signal.aborted) throw new Error(`${this.name} is not done after ${options.timeout} ms`);
      throw error;
    } finally {
      clearTimeout(timer);
    }
    if (this.json.error) throw new OperationFailed(this, this.json.error);
    return this.json.response;
  }

  private async poll(signal: AbortSignal): Promise<void> {
    while (!this.done) {
      const { json, response } = await this.client.call<OperationJson>("GET", `/v1/${this.name}`);
      this.json = json;
      if (this.done) return;
      const after = Number(response.headers.get("retry-after") ?? "1");
      await sleep(Math.max(0.1, after) * 1000, signal);
    }
  }

  /** Asks it to stop. */
  async cancel(): Promise<void> {
    await this.client.call("POST", `/v1/${this.name}:cancel`, {});
  }
}

interface ServerEvent {
  event: string;
  id?: string;
  data: string;
}

/** Server-Sent Events from a fetch body. */
async function* events(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event: ServerEvent = { event: "message", data: "" };
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) event.data += line.slice(5).trimStart();
        else if (line.startsWith("event:")) event.event = line.slice(6).trim();
        else if (line.startsWith("id:")) event.id = line.slice(3).trim();
      }
      if (event.data) yield event;
    }
  }
}

/** Checks a webhook delivery's Standard Webhooks signature (Express:
 * `express.raw()` for the body) and returns its JSON event; throws when
 * it is not signed with `secret` (whsec_...) or is more than `tolerance`
 * seconds from now. */
export async function verifyWebhook(
  secret: string,
  headers: Record<string, string | string[] | undefined> | Headers,
  body: Uint8Array | string,
  tolerance = 300,
): Promise<unknown> {
  const get = (name: string): string => {
    const value = headers instanceof Headers ? headers.get(name) : headers[name] ?? headers[name.toLowerCase()];
    const one = Array.isArray(value) ? value[0] : value;
    if (!one) throw new Error(`the ${name} header is missing`);
    return one;
  };
  if (!secret.startsWith("whsec_")) throw new Error("a longrun webhook secret starts with whsec_");
  const id = get("webhook-id");
  const stamp = get("webhook-timestamp");
  if (Math.abs(Date.now() / 1000 - Number(stamp)) > tolerance) throw new Error("the delivery's timestamp is too far from now");
  const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
  const key = await crypto.subtle.importKey("raw", base64(secret.slice(6)), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const signed = new Uint8Array([...new TextEncoder().encode(`${id}.${stamp}.`), ...bytes]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, signed));
  const expected = btoa(String.fromCharCode(...mac));
  const ok = get("webhook-signature")
    .split(" ")
    .some((candidate) => candidate.startsWith("v1,") && same(candidate.slice(3), expected));
  if (!ok) throw new Error("no signature matches the secret");
  return JSON.parse(new TextDecoder().decode(bytes));
}

function base64(text: string): Uint8Array<ArrayBuffer> {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** Compares two strings in time that does not depend on where they differ. */
function same(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}
