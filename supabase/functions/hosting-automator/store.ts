/**
 * The store: the SQL functions of the migrations (`public.hosting_*`), typed. Two thin callers reach them:
 * supabase-js `rpc` (the default, `store_rpc.ts`) and a direct Postgres connection (`store_pg.ts`, for the
 * CLI, the demo and tests). Answers are checked with zod, so both callers behave the same.
 */
import { z } from "zod";
import { HostingError } from "./errors.ts";

export const STEP_NAMES = ["cloudpanel_site", "ssl_certificate", "matomo_site"] as const;
export type StepName = (typeof STEP_NAMES)[number];
export type StepState = "started" | "done" | "failed" | "skipped";
export type EventLevel = "debug" | "info" | "warn" | "error";

/** How a SQL function answers: rows (set-returning) or one value. */
export type Returns = "rows" | "value";

/** SQL errors that are the caller's fault (bad argument, constraint, undefined object, raised): no retry helps. */
export function isPermanentSqlState(code: unknown): boolean {
  return typeof code === "string" && /^(22|23|42|P0)/.test(code);
}

/** A failed call as a HostingError: `internal` when the SQL refused it, else `store_failed` (retry later). */
export function storeError(fn: string, code: unknown, message: string, cause?: unknown): HostingError {
  return new HostingError(
    isPermanentSqlState(code) ? "internal" : "store_failed",
    `${fn} failed: ${code ?? ""} ${message}`,
    { cause },
  );
}

const FUNCTION_RE = /^hosting_[a-z_]+$/;

/**
 * The statement the SQL-speaking stores run: `public.<fn>(p_a => $1, …)`, read as rows or as one `value`.
 * The driver learns each parameter's type from the function's signature (and serialises jsonb itself).
 */
export function functionCall(fn: string, args: Record<string, unknown>, returns: Returns) {
  if (!FUNCTION_RE.test(fn)) throw new HostingError("internal", `not a store function: ${fn}`);
  const names = Object.keys(args);
  const list = names.map((name, i) => `${name} => $${i + 1}`).join(", ");
  return {
    text: returns === "rows"
      ? `select * from public.${fn}(${list})`
      : `select public.${fn}(${list}) as value`,
    values: names.map((name) => args[name]),
  };
}

/** Calls `public.<fn>(p_name => value, …)`; throws HostingError("store_failed") when the call fails. */
export type SqlCaller = (fn: string, args: Record<string, unknown>, returns: Returns) => Promise<unknown>;

const id = z.union([z.number(), z.string().regex(/^\d+$/)]).transform(Number);
const stepEntry = z.object({
  state: z.enum(["started", "done", "failed", "skipped"]),
  result: z.record(z.string(), z.unknown()),
});

const claimedRow = z.object({
  job_id: id,
  lease_token: z.string().uuid(),
  site_id: z.string().uuid(),
  domain: z.string().nullable(),
  attempt: z.number().int(),
  max_attempts: z.number().int(),
  lease_expires_at: z.union([z.string(), z.date()]).transform((v) => new Date(v)),
  steps: z.partialRecord(z.enum(STEP_NAMES), stepEntry).default({}),
}).transform((r) => ({
  jobId: r.job_id,
  leaseToken: r.lease_token,
  siteId: r.site_id,
  domain: r.domain,
  attempt: r.attempt,
  maxAttempts: r.max_attempts,
  leaseExpiresAt: r.lease_expires_at,
  steps: r.steps,
}));
export type ClaimedJob = z.output<typeof claimedRow>;

const failOutcome = z.union([
  z.object({ state: z.literal("queued"), run_at: z.string(), attempts: z.number() }),
  z.object({ state: z.literal("failed"), attempts: z.number() }),
]).nullable();
export type FailOutcome = z.output<typeof failOutcome>;

const enqueueResult = z.object({
  found: z.boolean(),
  queued: z.boolean().optional(),
  job_id: id.optional(),
  job_state: z.string().optional(),
  reason: z.string().optional(),
  status_dns: z.string().nullable().optional(),
  status_hosting: z.string().nullable().optional(),
});
export type EnqueueResult = z.output<typeof enqueueResult>;

const retryEntry = z.object({
  site_id: z.string(),
  domain: z.string().nullable(),
  reason: z.string().optional(),
})
  .passthrough();
const retryResult = z.object({
  found: z.boolean(),
  requeued: z.array(retryEntry),
  skipped: z.array(retryEntry.extend({ status_hosting: z.string().nullable() })),
});
export type RetryResult = z.output<typeof retryResult>;

/** `hosting_status()`: passed through as the JSON the SQL builds (documented in the README). */
const statusReport = z.object({
  generated_at: z.string(),
  sites: z.record(z.string(), z.number()),
  jobs: z.record(z.string(), z.number()),
  queue: z.object({ depth: z.number(), due: z.number(), oldest_age_seconds: z.number() }),
  running: z.array(z.record(z.string(), z.unknown())),
  retrying: z.array(z.record(z.string(), z.unknown())),
  recent_failures: z.array(z.record(z.string(), z.unknown())),
  missing_analytics: z.array(z.record(z.string(), z.unknown())),
});
export type StatusReport = z.output<typeof statusReport>;

const siteDetail = z.union([
  z.object({ found: z.literal(false) }),
  z.object({
    found: z.literal(true),
    site: z.object({
      id: z.string(),
      domain: z.string().nullable(),
      status_dns: z.string().nullable(),
      status_hosting: z.string().nullable(),
      hosting_doc_root: z.string().nullable(),
      matomo_site_id: z.number().nullable(),
      error_message: z.string().nullable(),
    }),
    job: z.record(z.string(), z.unknown()).nullable(),
    steps: z.record(z.string(), z.record(z.string(), z.unknown())),
    events: z.array(
      z.object({
        at: z.string(),
        level: z.string(),
        step: z.string().nullable(),
        code: z.string().nullable(),
        message: z.string(),
      }),
    ),
  }),
]);
export type SiteDetail = z.output<typeof siteDetail>;

const dueRow = z.object({
  job_id: id,
  site_id: z.string(),
  domain: z.string().nullable(),
  attempts: z.number(),
  run_at: z.union([z.string(), z.date()]).transform((v) => new Date(v)),
  steps: z.partialRecord(z.enum(STEP_NAMES), stepEntry).default({}),
});
export type DueJob = z.output<typeof dueRow>;

export interface ClaimArgs {
  worker: string;
  server: string;
  leaseSeconds: number;
  limit: number;
  siteId?: string;
}

export interface Lease {
  jobId: number;
  leaseToken: string;
}

export interface StepRecord {
  step: StepName;
  state: StepState;
  result?: Record<string, unknown>;
  code?: string;
  /** Already redacted. */
  message?: string;
  level?: EventLevel;
}

export class Store {
  readonly #call: SqlCaller;
  readonly #close: () => Promise<void>;

  constructor(call: SqlCaller, close: () => Promise<void> = () => Promise.resolve()) {
    this.#call = call;
    this.#close = close;
  }

  async enqueue(siteId: string): Promise<EnqueueResult> {
    return enqueueResult.parse(await this.#call("hosting_enqueue", { p_site_id: siteId }, "value"));
  }

  async claim(args: ClaimArgs): Promise<ClaimedJob[]> {
    const rows = await this.#call("hosting_claim_jobs", {
      p_worker: args.worker,
      p_server: args.server,
      p_lease_seconds: args.leaseSeconds,
      p_limit: args.limit,
      p_site_id: args.siteId ?? null,
    }, "rows");
    return z.array(claimedRow).parse(rows);
  }

  async heartbeat(lease: Lease, leaseSeconds: number, step?: StepName): Promise<boolean> {
    return z.boolean().parse(
      await this.#call("hosting_heartbeat", {
        p_job_id: lease.jobId,
        p_lease_token: lease.leaseToken,
        p_lease_seconds: leaseSeconds,
        p_step: step ?? null,
      }, "value"),
    );
  }

  async recordStep(lease: Lease, record: StepRecord): Promise<boolean> {
    return z.boolean().parse(
      await this.#call("hosting_record_step", {
        p_job_id: lease.jobId,
        p_lease_token: lease.leaseToken,
        p_step: record.step,
        p_state: record.state,
        p_result: record.result ?? {},
        p_code: record.code ?? null,
        p_message: record.message ?? null,
        p_level: record.level ?? "info",
      }, "value"),
    );
  }

  async complete(
    lease: Lease,
    docRoot: string,
    matomoSiteId: number | null,
    message?: string,
  ): Promise<boolean> {
    return z.boolean().parse(
      await this.#call("hosting_complete_job", {
        p_job_id: lease.jobId,
        p_lease_token: lease.leaseToken,
        p_doc_root: docRoot,
        p_matomo_site_id: matomoSiteId,
        p_message: message ?? null,
      }, "value"),
    );
  }

  /** `internalMessage` must already be redacted. Null when the lease was lost. */
  async fail(
    lease: Lease,
    failure: { code: string; publicMessage: string; internalMessage: string; permanent: boolean },
  ): Promise<FailOutcome> {
    return failOutcome.parse(
      await this.#call("hosting_fail_job", {
        p_job_id: lease.jobId,
        p_lease_token: lease.leaseToken,
        p_code: failure.code,
        p_public_message: failure.publicMessage,
        p_internal_message: failure.internalMessage,
        p_permanent: failure.permanent,
      }, "value"),
    );
  }

  async release(lease: Lease, reason: string): Promise<boolean> {
    return z.boolean().parse(
      await this.#call("hosting_release_job", {
        p_job_id: lease.jobId,
        p_lease_token: lease.leaseToken,
        p_reason: reason,
      }, "value"),
    );
  }

  /** `message` must already be redacted. */
  async logEvent(
    event: {
      siteId: string;
      jobId: number;
      step: StepName;
      level: EventLevel;
      code: string;
      message: string;
    },
  ): Promise<void> {
    await this.#call("hosting_log_event", {
      p_site_id: event.siteId,
      p_job_id: event.jobId,
      p_step: event.step,
      p_level: event.level,
      p_code: event.code,
      p_message: event.message,
    }, "value");
  }

  async retry(target: { siteId: string } | { allFailed: true }): Promise<RetryResult> {
    const args = "siteId" in target
      ? { p_site_id: target.siteId, p_all_failed: false }
      : { p_site_id: null, p_all_failed: true };
    return retryResult.parse(await this.#call("hosting_retry", args, "value"));
  }

  /** One site by id or domain, with its job, journal and latest events. */
  async site(key: string, events = 20): Promise<SiteDetail> {
    return siteDetail.parse(await this.#call("hosting_site", { p_key: key, p_events: events }, "value"));
  }

  /** Jobs due now (read-only: nothing is claimed). */
  async due(limit = 100): Promise<DueJob[]> {
    return z.array(dueRow).parse(await this.#call("hosting_due", { p_limit: limit }, "rows"));
  }

  async status(limit = 20): Promise<StatusReport> {
    return statusReport.parse(await this.#call("hosting_status", { p_limit: limit }, "value"));
  }

  close(): Promise<void> {
    return this.#close();
  }
}
