/**
 * Test support: the HTTP handler built bare, in-process, with fakes for all it calls: the store's operator
 * methods and the workflow's invocations. No database, no sshd: each request concern (authentication, the
 * body, routes and methods, each route's answers) is tested on its own, fast.
 *
 * The fake store answers only what a test gives it and records every method called on it, whatever its name,
 * so "a refused request changes nothing" is "it called no store method and started no run". What the store's
 * answers mean in the database is tested on the real stack (tests/http.test.ts, tests/hostile_http.test.ts).
 */
import { createHandler, type Handler } from "../../supabase/functions/hosting-automator/http.ts";
import type { OperatorStore } from "../../supabase/functions/hosting-automator/http_actions.ts";
import { Logger, Redactor } from "../../supabase/functions/hosting-automator/log.ts";
import type {
  ClaimedJob,
  EnqueueResult,
  RemoveResult,
  RetryResult,
  StatusReport,
} from "../../supabase/functions/hosting-automator/store.ts";
import type {
  JobOutcome,
  RunOptions,
  RunResult,
} from "../../supabase/functions/hosting-automator/workflow.ts";
import { captureSink, registerSecret } from "./env.ts";

export const FUNCTION_URL = "http://functions.test/functions/v1/hosting-automator";

/** The configured key of every bare handler (registered for the final secret scan). */
export const KEY = registerSecret(`sb_secret_${crypto.randomUUID().replaceAll("-", "")}`);

/** What the fake store answers; a method without an answer fails the request (500) when called. */
export interface StoreAnswers {
  enqueue?: (siteId: string) => EnqueueResult | Promise<EnqueueResult>;
  retry?: (target: { siteId: string } | { allFailed: true }) => RetryResult | Promise<RetryResult>;
  remove?: (siteId: string) => RemoveResult | Promise<RemoveResult>;
  status?: () => StatusReport | Promise<StatusReport>;
}

export interface BareOptions {
  store?: StoreAnswers;
  /** What an invocation's run does; default: resolves at once with no outcomes. */
  run?: (options: RunOptions) => Promise<RunResult>;
  /** Hand background work to a waitUntil (as on Supabase); default true. */
  waitUntil?: boolean;
  waitAnswerMs?: number;
  authKeys?: string[];
}

export interface Bare {
  handler: Handler;
  /** Every store method called, in order, with its arguments. */
  storeCalls: Array<{ method: string; args: unknown[] }>;
  /** Every run an invocation was asked for, in order. */
  runs: RunOptions[];
  logs: string[];
  /** Background work handed to waitUntil and not finished yet. */
  pending: Set<Promise<unknown>>;
  /** Calls the handler as an HTTP client would (`key: null` sends no credentials). */
  request(
    path: string,
    init?: {
      method?: string;
      body?: unknown;
      key?: string | null;
      query?: string;
      rawBody?: BodyInit;
      headers?: Record<string, string>;
    },
  ): Promise<Response>;
  /** Waits for the background work handed to waitUntil. */
  settle(): Promise<void>;
}

/** A fake store: answers from `answers`, records every method called, whatever its name. */
function fakeStore(answers: StoreAnswers, calls: Bare["storeCalls"]): OperatorStore {
  return new Proxy({}, {
    get(_target, name) {
      if (typeof name !== "string" || name === "then") return undefined;
      return (...args: unknown[]) => {
        calls.push({ method: name, args });
        const answer = (answers as Record<string, ((...a: unknown[]) => unknown) | undefined>)[name];
        if (!answer) return Promise.reject(new Error(`the fake store has no answer for ${name}`));
        return Promise.resolve().then(() => answer(...args));
      };
    },
  }) as OperatorStore;
}

export function bareHandler(options: BareOptions = {}): Bare {
  const storeCalls: Bare["storeCalls"] = [];
  const runs: RunOptions[] = [];
  const logs: string[] = [];
  const pending = new Set<Promise<unknown>>();
  const run = options.run ?? (() => Promise.resolve({ outcomes: [] }));
  const handler = createHandler({
    authKeys: options.authKeys ?? [KEY],
    // No secret registered: the handler itself must keep the key out of its log lines.
    logger: new Logger(new Redactor(), { sink: captureSink(logs) }),
    store: fakeStore(options.store ?? {}, storeCalls),
    newInvocation: () => ({
      run(runOptions: RunOptions) {
        runs.push(runOptions);
        return run(runOptions);
      },
    }),
    waitUntil: options.waitUntil === false ? undefined : (work) => {
      const tracked = work.finally(() => pending.delete(tracked));
      pending.add(tracked);
    },
    waitAnswerMs: options.waitAnswerMs,
  });
  return {
    handler,
    storeCalls,
    runs,
    logs,
    pending,
    request(path, init = {}) {
      const headers = new Headers(init.headers);
      const key = init.key === undefined ? KEY : init.key;
      if (key !== null) headers.set("apikey", key);
      let body: BodyInit | undefined = init.rawBody;
      if (init.body !== undefined) {
        body = JSON.stringify(init.body);
        headers.set("content-type", "application/json");
      }
      const url = `${FUNCTION_URL}${path}${init.query ? `?${init.query}` : ""}`;
      return handler(new Request(url, { method: init.method ?? (body ? "POST" : "GET"), headers, body }));
    },
    async settle() {
      while (pending.size > 0) await Promise.allSettled([...pending]);
    },
  };
}

/** An error answer's status, code and message. */
export async function errorOf(response: Response) {
  const body = await response.json();
  return { status: response.status, code: body.error?.code, message: body.error?.message as string };
}

/** A claimed job as the progress events carry it: the handler reads only these fields. */
export function claimedJob(n: number): ClaimedJob {
  return {
    jobId: n,
    leaseToken: "00000000-0000-4000-8000-000000000000",
    siteId: siteIdOf(n),
    domain: `site${n}.example`,
  } as Partial<ClaimedJob> as ClaimedJob;
}

/** A finished job's outcome; the handler passes it through as it is. */
export function outcomeOf(n: number, status: JobOutcome["status"] = "active"): JobOutcome {
  return {
    job_id: n,
    site_id: siteIdOf(n),
    domain: `site${n}.example`,
    kind: "provision",
    attempt: 1,
    status,
    steps: [{ step: "cloudpanel_site", status: "done", duration_ms: 5 }],
    duration_ms: 10,
  };
}

export function siteIdOf(n: number): string {
  return `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`;
}

/** A status report as the store answers it; the handler passes it through as it is. */
export function statusReport(): StatusReport {
  return {
    generated_at: "2025-01-01T00:00:00Z",
    sites: { active: 2, pending: 1 },
    jobs: { queued: 1 },
    queue: { depth: 1, due: 0, oldest_age_seconds: 3 },
    running: [],
    retrying: [],
    recent_failures: [{ site_id: siteIdOf(9), code: "invalid_domain" }],
    missing_analytics: [],
    removals: { queued: 0, running: 0, removed_last_day: 0, failed: [] },
    servers: [],
    waiting_for_capacity: 0,
    waiting_for_dns: [],
    certificates: { expiring_within_30_days: 0, soonest: [] },
    setup: {
      vault: true,
      vault_url: true,
      vault_key: true,
      pg_net: true,
      pg_cron: true,
      sweep_scheduled: true,
      sweep_schedule: "20 seconds",
    },
    waiting_for_server: { jobs: 0, by_reason: {}, sites: {} },
  };
}

/** A store answer for a site whose job is queued now. */
export function queued(jobId: number): EnqueueResult {
  return { found: true, queued: true, job_id: jobId, job_state: "queued" };
}
