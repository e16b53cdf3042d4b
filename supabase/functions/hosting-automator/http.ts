/**
 * The HTTP handler: a `fetch`-style function that tests call in-process.
 *
 *   POST /               {"site_id": …} | Database Webhook payload | {} (drain)   → 202, or 200 with ?wait=true
 *   GET  /status         the operator's report
 *   POST /retry          {"site_id": …} | {"all_failed": true}
 *   POST /remove         {"site_id": …}   → 202 and the removal runs, 200 with ?wait=true or when none is queued
 *
 * Every request presents a configured key, byte for byte. Errors are `{"error": {"code", "message"}}` with a
 * safe message; details go to the log only. A refused request changes nothing.
 */
import { z } from "zod";
import { HostingError, isHostingError, toHostingError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { StepName, Store } from "./store.ts";
import type { Invocation, JobOutcome, Progress, RunResult } from "./workflow.ts";

export const MAX_BODY_BYTES = 64 * 1024;
/** Deeper JSON is refused before validation; the deepest shape, a Database Webhook's row, stays far below. */
export const MAX_JSON_DEPTH = 64;
/**
 * `?wait=true` answers by then, finished or not: Supabase ends a request that sends nothing for 150 s, and the
 * run may take the whole time budget (130 s by default). What is still running goes on in the background.
 */
export const WAIT_ANSWER_MS = 120_000;

export interface HandlerDeps {
  /** Keys a caller may present; compared in constant time. */
  authKeys: string[];
  logger: Logger;
  store: Store;
  newInvocation: () => Invocation;
  /**
   * `EdgeRuntime.waitUntil` on Supabase. Without it a 202's work is awaited before answering; work that
   * outlives a `?wait=true` answer keeps running on its own (the local server and the CLI are long-lived).
   */
  waitUntil?: (work: Promise<unknown>) => void;
  /** How long `?wait=true` waits for the run before answering with what finished so far (tests shorten it). */
  waitAnswerMs?: number;
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

/** UUIDs are case-insensitive; the lower-case form is the one the database and the answers use. */
const siteId = z.uuid({ message: "must be a UUID" }).transform((id) => id.toLowerCase());
const siteRequest = z.strictObject({ site_id: siteId });
const drainRequest = z.strictObject({});
/** Supabase Database Webhook payload; `user_id` appears in Supabase's published types only. */
const webhookRequest = z.strictObject({
  type: z.enum(["INSERT", "UPDATE", "DELETE"]),
  table: z.literal("sites", { message: 'must be "sites"' }),
  schema: z.literal("public", { message: 'must be "public"' }),
  record: z.looseObject({ id: siteId }).nullable(),
  old_record: z.looseObject({}).nullable().optional(),
  user_id: z.string().nullable().optional(),
});
/** `/remove` takes the kick's site form only: removing is never a side effect of a webhook or a drain. */
const removeRequest = siteRequest;
const retryRequest = z.union([
  z.strictObject({ site_id: siteId }),
  z.strictObject({ all_failed: z.literal(true) }),
]);

type Kick = { siteId?: string; ignored?: string };

function describe(error: z.ZodError): string {
  return error.issues.slice(0, 3).map((issue) => {
    const where = issue.path.length ? issue.path.join(".") : "body";
    if (issue.code === "unrecognized_keys") {
      return `${where}: unknown field ${issue.keys.map((k) => quoted(k)).join(", ")}`;
    }
    return `${where}: ${issue.message}`;
  }).join("; ");
}

/** A caller's text in an answer: quoted and cut short. */
function quoted(text: string): string {
  return JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}…` : text);
}

function parseKick(body: unknown): Kick {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw badRequest('body: expected a JSON object: {"site_id": "<uuid>"}, {} or a Database Webhook payload');
  }
  if ("type" in body || "record" in body) {
    const hook = webhookRequest.safeParse(body);
    if (!hook.success) throw badRequest(`Database Webhook payload: ${describe(hook.error)}`);
    if (hook.data.type === "DELETE") return { ignored: "the row was deleted" };
    // Only a DELETE comes without the row; an INSERT or UPDATE without it is malformed.
    if (hook.data.record === null) {
      throw badRequest(`Database Webhook payload: record: required for ${hook.data.type}`);
    }
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

/** Other query parameters are ignored: clients add their own (supabase-js `forceFunctionRegion`). */
function parseWait(url: URL): boolean {
  const values = url.searchParams.getAll("wait");
  if (values.length > 1) throw badRequest("wait: given more than once");
  const wait = values[0] ?? null;
  if (wait === null || wait === "false" || wait === "0") return false;
  if (wait === "true" || wait === "1" || wait === "") return true;
  throw badRequest("wait: must be true or false");
}

// ---- the body ----

/** Media types read as JSON: none given, JSON, and `text/plain` (what supabase-js sends for a string body). */
const JSON_TYPES = new Set(["application/json", "text/plain"]);

/** RFC 9110 optional white space is SP and HTAB only; any other character belongs to the value. */
function withoutOws(value: string): string {
  return value.replace(/^[ \t]+|[ \t]+$/g, "");
}

/** The declared length, or null; malformed, negative or conflicting values are the caller's error. */
function declaredLength(request: Request): number | null {
  const header = request.headers.get("content-length");
  if (header === null) return null;
  // Repeated fields arrive joined by commas; the same value repeated is one length (RFC 9110 §8.6).
  const values = header.split(",").map(withoutOws);
  if (!values.every((value) => /^[0-9]+$/.test(value)) || new Set(values.map(Number)).size !== 1) {
    throw badRequest("Content-Length: must be one non-negative whole number");
  }
  return Number(values[0]);
}

/** Only uncompressed UTF-8 JSON: other encodings, media types and charsets are refused before reading. */
function checkMediaType(request: Request): void {
  const encoding = request.headers.get("content-encoding");
  if (encoding !== null && withoutOws(encoding).toLowerCase() !== "identity") {
    throw badRequest("Content-Encoding: not supported; send the body uncompressed");
  }
  const type = request.headers.get("content-type");
  if (type === null) return;
  const [essence, ...parameters] = type.split(";");
  if (!JSON_TYPES.has(withoutOws(essence).toLowerCase())) {
    throw badRequest("Content-Type: must be application/json");
  }
  for (const parameter of parameters) {
    const [name, value = ""] = parameter.split("=");
    const charset = value.trim().replace(/^"|"$/g, "").toLowerCase();
    if (name.trim().toLowerCase() === "charset" && charset !== "utf-8" && charset !== "utf8") {
      throw badRequest("Content-Type: charset must be utf-8");
    }
  }
}

function tooLarge(): HostingError {
  return new HostingError("payload_too_large", "body over limit", {
    publicMessage: `The request body is larger than ${MAX_BODY_BYTES} bytes.`,
  });
}

/**
 * Reads at most MAX_BODY_BYTES of UTF-8 JSON; an empty body is `{}`. A body that cannot be read to its end
 * (the client closed early, the stream failed) is the caller's error, like one that is not JSON.
 */
async function readJson(request: Request): Promise<unknown> {
  const declared = declaredLength(request);
  if (declared !== null && declared > MAX_BODY_BYTES) throw tooLarge();
  checkMediaType(request);
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (request.body) {
    try {
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
    } catch (error) {
      if (isHostingError(error)) throw error;
      throw new HostingError("bad_request", "reading the body failed", {
        publicMessage: "body: could not be read to its end (the client closed early or the stream failed)",
        cause: error,
      });
    }
  }
  if (declared !== null && size !== declared) {
    throw badRequest(`body: ${size} bytes, but Content-Length says ${declared}`);
  }
  let text: string;
  try {
    // A UTF-8 byte order mark is dropped (RFC 8259 §8.1 lets parsers ignore it).
    text = new TextDecoder("utf-8", { fatal: true }).decode(concat(chunks, size));
  } catch {
    throw badRequest("body: is not valid UTF-8");
  }
  // Only JSON's own white space: a body of U+00A0 is not empty, it is not JSON.
  if (/^[ \t\r\n]*$/.test(text)) return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw badRequest("body: is not valid JSON");
  }
  checkStructure(text);
  return value;
}

/**
 * Refuses what JSON.parse lets through silently: a key repeated in one object (parsers disagree on which
 * value wins) and nesting deeper than MAX_JSON_DEPTH. `text` is valid JSON, so a plain scan suffices.
 */
function checkStructure(text: string): void {
  const open: Array<Set<string> | null> = []; // the keys seen, per open object; null for an array
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      const keys = open[open.length - 1];
      if (keys && expectKey) {
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        if (keys.has(key)) throw badRequest(`body: the key ${quoted(key)} appears twice in one object`);
        keys.add(key);
        expectKey = false;
      }
      i = end;
    } else if (c === "{" || c === "[") {
      open.push(c === "{" ? new Set() : null);
      if (open.length > MAX_JSON_DEPTH) throw badRequest(`body: nested deeper than ${MAX_JSON_DEPTH} levels`);
      expectKey = c === "{";
    } else if (c === "}" || c === "]") {
      open.pop();
      expectKey = false;
    } else if (c === ",") {
      expectKey = open.length > 0 && open[open.length - 1] !== null;
    }
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

/** `Bearer`, any case, then SP/HTAB, then the token; other schemes present no key. */
const BEARER = /^bearer[ \t]+(.*)$/i;

/**
 * The keys a request presents: the `apikey` header and the Bearer token, each exactly as sent but for
 * SP/HTAB around it. One of them must be a configured key; the other may carry something else (supabase-js
 * puts a signed-in user's JWT there). Unicode white space such as U+00A0 is part of the value, so a key with
 * it is not the key.
 */
function presentedKeys(request: Request): string[] {
  const keys: string[] = [];
  const apikey = request.headers.get("apikey");
  if (apikey !== null) keys.push(withoutOws(apikey));
  const bearer = BEARER.exec(request.headers.get("authorization") ?? "");
  if (bearer) keys.push(withoutOws(bearer[1]));
  return keys.filter((key) => key !== "");
}

// ---- routing ----

type Route = "kick" | "status" | "retry" | "remove";

/** Supabase passes `/hosting-automator/...`; a local server may pass `/functions/v1/hosting-automator/...` or `/...`. */
function routeOf(url: URL): Route | null {
  const path = url.pathname.replace(/\/+$/, "").replace(/^\/functions\/v1/, "").replace(
    /^\/hosting-automator/,
    "",
  );
  if (path === "") return "kick";
  if (path === "/status") return "status";
  if (path === "/retry") return "retry";
  if (path === "/remove") return "remove";
  return null;
}

const METHODS: Record<Route, string> = { kick: "POST", status: "GET", retry: "POST", remove: "POST" };

/** A job a `?wait=true` answer left running, and the step it was at (null before its first step). */
interface RunningJob {
  job_id: number;
  site_id: string;
  domain: string | null;
  step: StepName | null;
}

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

  /** Logs how a run ended, and hands it to waitUntil when there is one. */
  function background(run: Promise<RunResult>): Promise<void> {
    const logged = run.then(
      (result) => deps.logger.info("invocation finished", summary(result)),
      (error) => deps.logger.error("invocation failed", { error: toHostingError(error) }),
    );
    if (deps.waitUntil) deps.waitUntil(logged);
    return logged;
  }

  /**
   * ?wait=true: the run's result, or, when WAIT_ANSWER_MS passes first, the jobs finished so far and those
   * still running (followed through the run's progress events), while the run goes on in the background.
   */
  async function waitFor(start: (onProgress: (event: Progress) => void) => Promise<RunResult>) {
    const finished: JobOutcome[] = [];
    const running = new Map<number, RunningJob>();
    const run = start((event) => {
      const { job } = event;
      if (event.kind === "job_started") {
        running.set(job.jobId, { job_id: job.jobId, site_id: job.siteId, domain: job.domain, step: null });
      } else if (event.kind === "step_started") {
        const entry = running.get(job.jobId);
        if (entry) entry.step = event.step;
      } else if (event.kind === "job_finished") {
        running.delete(job.jobId);
        finished.push(event.outcome);
      }
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const answerBy = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), deps.waitAnswerMs ?? WAIT_ANSWER_MS);
    });
    let result: RunResult | null;
    try {
      result = await Promise.race([run, answerBy]);
    } finally {
      clearTimeout(timer);
    }
    if (result) return { ...result, running: [], complete: true };
    // Without waitUntil the run is not awaited here: answering in time is the point.
    background(run);
    return {
      outcomes: [...finished],
      running: [...running.values()].map((entry) => ({ ...entry })),
      complete: false,
    };
  }

  /** Runs the workflow in the background (waitUntil), else awaits it before answering. */
  async function inBackground(run: () => Promise<RunResult>): Promise<void> {
    const logged = background(run());
    if (!deps.waitUntil) await logged;
  }

  /**
   * Runs the site's open job (whatever its kind), or with no site whatever is due: 202 at once and the work
   * in the background (then any other due job), or with ?wait=true 200 and the outcome.
   */
  async function run(wait: boolean, siteId: string | undefined, job: number | undefined): Promise<Response> {
    const invocation = deps.newInvocation();
    if (wait) {
      // With a site, only that site's job runs, so the caller gets its answer soon.
      const result = await waitFor((onProgress) => invocation.run({ siteId, drain: !siteId, onProgress }));
      return json(200, { site_id: siteId, ...result });
    }
    await inBackground(() => invocation.run({ siteId, drain: true }));
    return json(202, { accepted: true, site_id: siteId, job_id: job });
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
    return await run(wait, kick.siteId, job);
  }

  /**
   * Asks for the site's removal and runs it like a kick for that site. A removal already open (asked twice,
   * or the row was deleted) is run, not queued a second time; when none is open the answer is 200 and why.
   */
  async function remove(request: Request, url: URL): Promise<Response> {
    const wait = parseWait(url);
    const body = await readJson(request);
    if (typeof body !== "object" || body === null || Array.isArray(body) || !("site_id" in body)) {
      throw badRequest('body: expected {"site_id": "<uuid>"}');
    }
    const parsed = removeRequest.safeParse(body);
    if (!parsed.success) throw badRequest(describe(parsed.error));
    const siteId = parsed.data.site_id;
    const removal = await deps.store.remove(siteId);
    if (!removal.found) throw siteNotFound();
    if (removal.job_id !== undefined && (removal.job_state === "queued" || removal.job_state === "running")) {
      return await run(wait, siteId, removal.job_id);
    }
    return json(200, {
      accepted: false,
      site_id: siteId,
      reason: removal.reason ?? "not_queued",
      status_hosting: removal.status_hosting,
      ...(removal.job_id !== undefined ? { job_id: removal.job_id, job_state: removal.job_state } : {}),
    });
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
    const answer = { requeued: retried.requeued, skipped: retried.skipped };
    if (retried.requeued.length === 0) return json(200, answer);
    const invocation = deps.newInvocation();
    if (wait) {
      return json(200, {
        ...answer,
        ...await waitFor((onProgress) => invocation.run({ drain: true, onProgress })),
      });
    }
    // Without waitUntil the requeued jobs wait for the kick the database sends.
    if (deps.waitUntil) await inBackground(() => invocation.run({ drain: true }));
    return json(200, answer);
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
      else if (route === "remove") response = await remove(request, url);
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
