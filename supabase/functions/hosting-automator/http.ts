/**
 * The HTTP handler (design §5): a `fetch`-style function that tests call in-process.
 *
 *   POST /               {"site_id": …} | Database Webhook payload | {} (drain)   → 202, or 200 with ?wait=true
 *   GET  /status         the operator's report
 *   POST /retry          {"site_id": …} | {"all_failed": true}
 *
 * Errors are `{"error": {"code", "message"}}` with a safe message; details go to the log only.
 */
import { z } from "zod";
import { HostingError, toHostingError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { Store } from "./store.ts";
import type { Invocation, RunResult } from "./workflow.ts";

export const MAX_BODY_BYTES = 64 * 1024;

export interface HandlerDeps {
  /** Keys a caller may present; compared in constant time. */
  authKeys: string[];
  logger: Logger;
  store: Store;
  newInvocation: () => Invocation;
  /** `EdgeRuntime.waitUntil` on Supabase; without it the work is awaited before answering. */
  waitUntil?: (work: Promise<unknown>) => void;
}

export type Handler = (request: Request) => Promise<Response>;

const STATUS_OF: Partial<Record<string, number>> = {
  bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  method_not_allowed: 405,
  payload_too_large: 413,
  store_failed: 503,
};

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

export function errorResponse(error: HostingError, headers?: Record<string, string>): Response {
  return json(
    STATUS_OF[error.code] ?? 500,
    { error: { code: error.code, message: error.publicMessage } },
    headers,
  );
}

function badRequest(message: string): HostingError {
  return new HostingError("bad_request", message, { publicMessage: message });
}

function siteNotFound(): HostingError {
  return new HostingError("not_found", "site not found", { publicMessage: "No site has this site_id." });
}

// ---- request shapes ----

const siteId = z.uuid({ message: "must be a UUID" });
const siteRequest = z.strictObject({ site_id: siteId });
const drainRequest = z.strictObject({});
/** Supabase Database Webhook payload (reference/supabase.md §1); `user_id` appears in the docs' types only. */
const webhookRequest = z.strictObject({
  type: z.enum(["INSERT", "UPDATE", "DELETE"]),
  table: z.literal("sites", { message: 'must be "sites"' }),
  schema: z.literal("public", { message: 'must be "public"' }),
  record: z.looseObject({ id: siteId }).nullable(),
  old_record: z.looseObject({}).nullable().optional(),
  user_id: z.string().nullable().optional(),
});
const retryRequest = z.union([
  z.strictObject({ site_id: siteId }),
  z.strictObject({ all_failed: z.literal(true) }),
]);

type Kick = { siteId?: string; ignored?: string };

function describe(error: z.ZodError): string {
  return error.issues.slice(0, 3).map((issue) => {
    const where = issue.path.length ? issue.path.join(".") : "body";
    if (issue.code === "unrecognized_keys") {
      return `${where}: unknown field ${issue.keys.map((k) => `"${k}"`).join(", ")}`;
    }
    return `${where}: ${issue.message}`;
  }).join("; ");
}

function parseKick(body: unknown): Kick {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw badRequest('body: expected a JSON object: {"site_id": "<uuid>"}, {} or a Database Webhook payload');
  }
  if ("type" in body || "record" in body) {
    const hook = webhookRequest.safeParse(body);
    if (!hook.success) throw badRequest(`Database Webhook payload: ${describe(hook.error)}`);
    if (hook.data.type === "DELETE" || hook.data.record === null) return { ignored: "the row was deleted" };
    return { siteId: hook.data.record.id };
  }
  if ("site_id" in body) {
    const site = siteRequest.safeParse(body);
    if (!site.success) throw badRequest(describe(site.error));
    return { siteId: site.data.site_id };
  }
  const drain = drainRequest.safeParse(body);
  if (!drain.success) {
    throw badRequest(
      `${describe(drain.error)}; expected {"site_id": "<uuid>"}, {} or a Database Webhook payload`,
    );
  }
  return {};
}

function parseWait(url: URL): boolean {
  const wait = url.searchParams.get("wait");
  if (wait === null || wait === "false" || wait === "0") return false;
  if (wait === "true" || wait === "1" || wait === "") return true;
  throw badRequest("wait: must be true or false");
}

/** Reads at most MAX_BODY_BYTES; an empty body is `{}`. */
async function readJson(request: Request): Promise<unknown> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  const tooLarge = () =>
    new HostingError("payload_too_large", "body over limit", {
      publicMessage: `The request body is larger than ${MAX_BODY_BYTES} bytes.`,
    });
  if (declared > MAX_BODY_BYTES) throw tooLarge();
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (request.body) {
    const reader = request.body.getReader();
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > MAX_BODY_BYTES) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(value);
    }
  }
  const text = new TextDecoder().decode(concat(chunks, size)).trim();
  if (text === "") return {};
  try {
    return JSON.parse(text);
  } catch {
    throw badRequest("body: is not valid JSON");
  }
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

// ---- authentication ----

async function sha256(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

/** Compares digests, so the time taken depends on neither the keys' lengths nor where they differ. */
function sameDigest(a: Uint8Array, b: Uint8Array): boolean {
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function presentedKeys(request: Request): string[] {
  const keys: string[] = [];
  const apikey = request.headers.get("apikey");
  if (apikey) keys.push(apikey.trim());
  const bearer = /^Bearer\s+(.+)$/i.exec(request.headers.get("authorization") ?? "");
  if (bearer) keys.push(bearer[1].trim());
  return keys;
}

// ---- routing ----

type Route = "kick" | "status" | "retry";

/** Supabase passes `/hosting-automator/...`; a local server may pass `/functions/v1/hosting-automator/...` or `/...`. */
function routeOf(url: URL): Route | null {
  const path = url.pathname.replace(/\/+$/, "").replace(/^\/functions\/v1/, "").replace(
    /^\/hosting-automator/,
    "",
  );
  if (path === "") return "kick";
  if (path === "/status") return "status";
  if (path === "/retry") return "retry";
  return null;
}

const METHODS: Record<Route, string> = { kick: "POST", status: "GET", retry: "POST" };

export function createHandler(deps: HandlerDeps): Handler {
  const allowed = Promise.all(deps.authKeys.map(sha256));

  async function authenticated(request: Request): Promise<boolean> {
    const keys = await allowed;
    let ok = false;
    for (const presented of presentedKeys(request)) {
      const digest = await sha256(presented);
      for (const key of keys) ok = sameDigest(digest, key) || ok;
    }
    return ok;
  }

  /** Runs the workflow now (wait) or in the background (waitUntil), else awaits it before answering. */
  async function work(run: () => Promise<RunResult>, wait: boolean): Promise<RunResult | null> {
    if (wait) return await run();
    const background = run().then(
      (result) => deps.logger.info("invocation finished", summary(result)),
      (error) => deps.logger.error("invocation failed", { error: toHostingError(error) }),
    );
    if (deps.waitUntil) deps.waitUntil(background);
    else await background;
    return null;
  }

  async function kick(request: Request, url: URL): Promise<Response> {
    const wait = parseWait(url);
    const kick = parseKick(await readJson(request));
    if (kick.ignored) return json(200, { accepted: false, reason: kick.ignored });
    let job: number | undefined;
    if (kick.siteId) {
      const queued = await deps.store.enqueue(kick.siteId);
      if (!queued.found) {
        throw siteNotFound();
      }
      if (queued.job_id === undefined) {
        return json(200, {
          accepted: false,
          site_id: kick.siteId,
          reason: queued.reason,
          status_dns: queued.status_dns,
          status_hosting: queued.status_hosting,
        });
      }
      job = queued.job_id;
    }
    const invocation = deps.newInvocation();
    // With ?wait=true and a site, only that site's job runs, so the caller gets its answer soon.
    const result = await work(
      () => invocation.run({ siteId: kick.siteId, drain: !(wait && kick.siteId) }),
      wait,
    );
    if (result) return json(200, { site_id: kick.siteId, ...result });
    return json(202, { accepted: true, site_id: kick.siteId, job_id: job });
  }

  async function retry(request: Request, url: URL): Promise<Response> {
    const wait = parseWait(url);
    const parsed = retryRequest.safeParse(await readJson(request));
    if (!parsed.success) throw badRequest('body: expected {"site_id": "<uuid>"} or {"all_failed": true}');
    const target = "site_id" in parsed.data ? { siteId: parsed.data.site_id } : { allFailed: true as const };
    const retried = await deps.store.retry(target);
    if (!retried.found) {
      throw siteNotFound();
    }
    let result: RunResult | null = null;
    if (retried.requeued.length > 0 && (wait || deps.waitUntil)) {
      const invocation = deps.newInvocation();
      result = await work(() => invocation.run({ drain: true }), wait);
    }
    return json(200, { requeued: retried.requeued, skipped: retried.skipped, ...(result ?? {}) });
  }

  return async function handle(request: Request): Promise<Response> {
    const started = performance.now();
    const url = new URL(request.url);
    let response: Response;
    try {
      if (!await authenticated(request)) {
        throw new HostingError("unauthorized", "no valid key presented");
      }
      const route = routeOf(url);
      if (!route) throw new HostingError("not_found", `no route ${url.pathname}`);
      if (request.method !== METHODS[route]) {
        return errorResponse(new HostingError("method_not_allowed", request.method), {
          allow: METHODS[route],
        });
      }
      if (route === "status") response = json(200, await deps.store.status());
      else if (route === "retry") response = await retry(request, url);
      else response = await kick(request, url);
    } catch (error) {
      const failure = toHostingError(error);
      if ((STATUS_OF[failure.code] ?? 500) >= 500) {
        deps.logger.error("request failed", { code: failure.code, detail: failure.message });
      }
      response = errorResponse(failure);
    }
    deps.logger.info("request", {
      method: request.method,
      path: url.pathname,
      status: response.status,
      duration_ms: Math.round(performance.now() - started),
    });
    return response;
  };
}

/** Every request gets the configuration error (names the variable and the rule; no value). */
export function configErrorHandler(error: HostingError): Handler {
  return () => Promise.resolve(errorResponse(error));
}

function summary(result: RunResult): Record<string, unknown> {
  const counts: Record<string, number> = {};
  for (const outcome of result.outcomes) counts[outcome.status] = (counts[outcome.status] ?? 0) + 1;
  return { jobs: result.outcomes.length, ...counts, stopped: result.stopped?.code };
}
