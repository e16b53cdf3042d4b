/**
 * The store: the SQL functions of the migrations (`public.hosting_*`), typed. Two thin callers reach them:
 * supabase-js `rpc` (the default, `store_rpc.ts`) and a direct Postgres connection (`store_pg.ts`, for the
 * CLI, the demo and tests). Answers are checked with zod, so both callers behave the same.
 */
import { z } from "zod";
import { DEFAULT_STEP_MS } from "./defaults.ts";
import { HostingError } from "./errors.ts";
import { endsJson, type StepEnd } from "./journal.ts";
import { Redactor } from "./log.ts";
import { type Outcome, outcomeJson } from "./outcome.ts";

export const STEP_NAMES = [
  "cloudpanel_site",
  "dns_check",
  "ssl_certificate",
  "https_verify",
  "matomo_site",
  "cloudpanel_site_delete",
  "matomo_site_delete",
] as const;
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
 * A call that has not answered in this long counts as failed (`store_failed`): a connection that died without
 * closing (a database restart, a stalled proxy) must not hold a worker until the platform kills it.
 */
export const STORE_CALL_TIMEOUT_MS = 15_000;
/** Pauses before a worker's write is tried again when the database cannot be reached (about 4 s in all). */
export const STORE_RETRY_DELAYS_MS: readonly number[] = [250, 1_000, 3_000];

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

export const JOB_KINDS = ["provision", "analytics", "remove"] as const;
export type JobKind = (typeof JOB_KINDS)[number];

const removalTarget = z.object({
  site_user: z.string().nullable(),
  doc_root: z.string().nullable(),
  matomo_site_id: z.number().int().positive().nullable(),
}).transform((t) => ({ siteUser: t.site_user, docRoot: t.doc_root, matomoSiteId: t.matomo_site_id }));
export type RemovalTarget = z.output<typeof removalTarget>;
/** The result values a removal needs, as steps keep them (`StepDef.keeps`) and the claim answers them. */
export type KeptKey = keyof z.input<typeof removalTarget>;

/** A server's address as the SQL answers it, and as the SSH client takes it. */
const serverFields = {
  name: z.string(),
  host: z.string(),
  port: z.number().int(),
  ssh_user: z.string(),
  host_key: z.string(),
};
const addressOf = (s: { name: string; host: string; port: number; ssh_user: string; host_key: string }) => ({
  name: s.name,
  host: s.host,
  port: s.port,
  user: s.ssh_user,
  hostKey: s.host_key,
});

/** The server a claimed job runs on: where to connect, and whether its circuit had failures. */
const claimedServer = z.object({
  ...serverFields,
  failures: z.number().int().default(0),
  public_ips: z.array(z.string()).default([]),
}).transform((s) => ({ ...addressOf(s), failures: s.failures, publicIps: s.public_ips }));
export type ClaimedServer = z.output<typeof claimedServer>;

const claimedRow = z.object({
  job_id: id,
  lease_token: z.string().uuid(),
  site_id: z.string().uuid(),
  domain: z.string().nullable(),
  domain_chars: z.number().int().nullable().default(null),
  domain_bytes: z.number().int().nullable().default(null),
  kind: z.enum(JOB_KINDS).default("provision"),
  attempt: z.number().int(),
  max_attempts: z.number().int(),
  lease_expires_at: z.union([z.string(), z.date()]).transform((v) => new Date(v)),
  steps: z.partialRecord(z.enum(STEP_NAMES), stepEntry).default({}),
  estimates: z.partialRecord(z.enum(STEP_NAMES), z.number()).default({}),
  target: removalTarget.nullable().default(null),
  server: claimedServer,
}).transform((r) => ({
  jobId: r.job_id,
  leaseToken: r.lease_token,
  siteId: r.site_id,
  domain: r.domain,
  /** True when the text read is exactly the stored text (same characters and UTF-8 bytes in the database). */
  domainIntact: r.domain === null || r.domain_chars === null ||
    ([...r.domain].length === r.domain_chars &&
      new TextEncoder().encode(r.domain).length === r.domain_bytes),
  kind: r.kind,
  attempt: r.attempt,
  maxAttempts: r.max_attempts,
  leaseExpiresAt: r.lease_expires_at,
  steps: r.steps,
  /** Expected milliseconds per step (p90 of recent runs), where known. */
  estimates: r.estimates,
  /** A removal's target, copied when it was queued (its row may be gone); null for other kinds. */
  target: r.target,
  /** The CloudPanel server the site lives on. */
  server: r.server,
}));
export type ClaimedJob = z.output<typeof claimedRow>;

/** The password the site step must use; `prior`: an earlier claim stored it; `stored`: false without Vault. */
const siteCredentials = z.object({ password: z.string().min(1), prior: z.boolean(), stored: z.boolean() });
export type SiteCredentials = z.output<typeof siteCredentials>;

const failOutcome = z.union([
  z.object({ state: z.literal("queued"), run_at: z.string(), attempts: z.number() }),
  z.object({ state: z.literal("failed"), attempts: z.number() }),
]).nullable();
export type FailOutcome = z.output<typeof failOutcome>;

const advanceAnswer = z.union([
  z.object({ ok: z.literal(true), credentials: siteCredentials.optional() }),
  z.object({ ok: z.literal(false), reason: z.literal("lease_lost") }),
  z.object({ ok: z.literal(false), reason: z.literal("cancelled") }),
  z.object({
    ok: z.literal(false),
    reason: z.literal("domain_taken"),
    code: z.enum(["domain_taken", "domain_being_removed"]).default("domain_taken"),
    message: z.string(),
    next: failOutcome.optional(),
  }),
]);
export type Advance = z.output<typeof advanceAnswer>;

/** The exit's answer: the job's state now (and when it runs again, when queued), or the lease was lost. */
const exitAnswer = z.union([
  z.object({ ok: z.literal(false), reason: z.literal("lease_lost") }),
  z.object({
    ok: z.literal(true),
    state: z.enum(["succeeded", "queued", "failed", "cancelled"]),
    run_at: z.string().optional(),
    attempts: z.number().int().optional(),
  }),
]);
export type ExitAnswer = z.output<typeof exitAnswer>;
export type ExitTaken = Extract<ExitAnswer, { ok: true }>;

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

const serverRow = z.object({ ...serverFields, state: z.enum(["active", "draining", "disabled"]) })
  .transform((s) => ({ ...addressOf(s), state: s.state }));
export type ServerRow = z.output<typeof serverRow>;

const removeResult = z.union([
  z.object({ found: z.literal(false) }),
  z.object({
    found: z.literal(true),
    status_hosting: z.string().nullable(),
    queued: z.boolean(),
    job_id: id.optional(),
    job_state: z.string().optional(),
    reason: z.enum(["nothing_to_remove", "not_queued", "row_deleted"]).optional(),
  }),
]);
export type RemoveResult = z.output<typeof removeResult>;

const siteLogin = z.object({
  site_id: z.string(),
  domain: z.string().nullable(),
  site_user: z.string(),
  password: z.string().min(1),
  host: z.string().nullable(),
  port: z.number().int().nullable(),
  doc_root: z.string().nullable(),
});
export type SiteLogin = z.output<typeof siteLogin>;

/** The database's refusal to give credentials, as a HostingError whose public text is its explanation. */
function credentialsError(error: unknown): unknown {
  if (!(error instanceof HostingError)) return error;
  const sqlState = /failed: (P0002|55000) /.exec(error.message)?.[1];
  if (!sqlState) return error;
  const explanation = error.message.slice(error.message.indexOf(sqlState) + sqlState.length + 1).trim();
  return new HostingError(sqlState === "P0002" ? "not_found" : "credentials_unavailable", error.message, {
    publicMessage: explanation,
    cause: error,
  });
}

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

/** `hosting_status()`: passed through as the JSON the SQL builds (documented in docs/http.md). */
const statusReport = z.object({
  generated_at: z.string(),
  sites: z.record(z.string(), z.number()),
  jobs: z.record(z.string(), z.number()),
  doorbell: z.object({
    kicks_on_the_way: z.number(),
    slots_taken: z.number(),
    slots: z.number(),
    kicks: z.record(z.string(), z.unknown()),
  }).optional(),
  queue: z.object({ depth: z.number(), due: z.number(), oldest_age_seconds: z.number() }),
  running: z.array(z.record(z.string(), z.unknown())),
  retrying: z.array(z.record(z.string(), z.unknown())),
  recent_failures: z.array(z.record(z.string(), z.unknown())),
  missing_analytics: z.array(z.record(z.string(), z.unknown())),
  /** Removal jobs open, finished in the last day, and failed ones waiting for an operator (kept or deleted row). */
  removals: z.object({
    queued: z.number(),
    running: z.number(),
    removed_last_day: z.number(),
    failed: z.array(z.record(z.string(), z.unknown())),
  }),
  /** Every CloudPanel server: state, placed sites against capacity, running jobs, recent failures, circuit. */
  servers: z.array(z.object({
    name: z.string(),
    host: z.string(),
    port: z.number(),
    state: z.string(),
    placed: z.number(),
    capacity: z.number().nullable(),
    running: z.number(),
    concurrency: z.number(),
    waiting: z.number(),
    failed_last_day: z.number(),
    circuit: z.object({
      state: z.enum(["closed", "open", "half_open"]),
      failures: z.number(),
      open_until: z.string().nullable(),
      last_error_code: z.string().nullable(),
      last_error: z.string().nullable(),
      last_error_at: z.string().nullable(),
    }),
  })),
  /** Jobs waiting because no active server has room for another site. */
  waiting_for_capacity: z.number(),
  /** Sites whose job waits for their DNS to point at the server. */
  waiting_for_dns: z.array(z.record(z.string(), z.unknown())),
  /** The certificates active sites serve: how many expire within 30 days, and the soonest. */
  certificates: z.object({
    expiring_within_30_days: z.number(),
    soonest: z.array(z.object({ site_id: z.string(), domain: z.string(), expires_at: z.string() })),
  }),
  /** Whether the database starts jobs by itself: the Vault secrets the kicks need, pg_net, pg_cron, the sweep. */
  setup: z.object({
    vault: z.boolean(),
    vault_url: z.boolean(),
    vault_key: z.boolean(),
    pg_net: z.boolean(),
    pg_cron: z.boolean(),
    /** Null when the schedule cannot be read. */
    sweep_scheduled: z.boolean().nullable(),
    sweep_schedule: z.string().nullable(),
  }),
  /** Queued jobs waiting for a server (disabled, unreachable by code, or none with room), and their sites. */
  waiting_for_server: z.object({
    jobs: z.number(),
    by_reason: z.record(z.string(), z.number()),
    sites: z.record(z.string(), z.number()),
  }),
  // Sections added later pass through to `/status` and the CLI as they are.
}).loose();
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
  kind: z.enum(JOB_KINDS).default("provision"),
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
  /** Only jobs whose expected remaining steps fit in this many milliseconds. */
  timeLeftMs?: number;
  /** The steps of each job kind, for that estimate. */
  plan?: Partial<Record<JobKind, readonly StepName[]>>;
  /** The estimate of a step with no history. */
  defaultStepMs?: number;
  /** The invocation's first claim: it answers one doorbell kick. */
  first?: boolean;
  /** The configured server (CLOUDPANEL_SSH_HOST), registered as `default` while no server is registered. */
  defaultServer?: { host: string; port: number; user: string; hostKey: string } | null;
}

export interface Lease {
  jobId: number;
  leaseToken: string;
}

/**
 * What the workflow needs of the store: claim a job, cross its step boundaries, renew its lease, end it; and
 * close a server's circuit when it answers again after failures.
 */
export type WorkerStore = Pick<Store, "claim" | "advance" | "heartbeat" | "exit" | "serverOk">;

export class Store {
  readonly #call: SqlCaller;
  readonly #close: () => Promise<void>;
  readonly #retryDelaysMs: readonly number[];
  readonly #redact: (text: string) => string;
  readonly #redactor: Redactor;
  readonly #options: { retryDelaysMs?: readonly number[]; redactor?: Redactor };

  /**
   * `retryDelaysMs`: a worker's writes that could not reach the database (a restart, a dropped connection) are
   * tried again after these pauses before the worker gives up on the job; its lease outlasts them.
   */
  constructor(
    call: SqlCaller,
    close: () => Promise<void> = () => Promise.resolve(),
    options: { retryDelaysMs?: readonly number[]; redactor?: Redactor } = {},
  ) {
    this.#call = call;
    this.#close = close;
    this.#options = options;
    this.#retryDelaysMs = options.retryDelaysMs ?? STORE_RETRY_DELAYS_MS;
    // The database's one redaction point: every text this store writes (event messages, errors, reasons) passes
    // it, so no caller can forget. Structured values (journal results, doc roots) are built by code and hold no
    // secret; redacting them could cut a domain that happens to contain a short secret's text.
    const redactor = options.redactor ?? new Redactor();
    this.#redactor = redactor;
    this.#redact = (text) => redactor.redact(text);
  }

  /** The same store (same connection), writing through `redactor`: the app's, which knows every secret. */
  withRedactor(redactor: Redactor): Store {
    return new Store(this.#call, this.#close, { ...this.#options, redactor });
  }

  /**
   * A worker's call, repeated while the database cannot be reached. Every such call is guarded by the lease, so
   * a repeat of one that did commit changes nothing (it answers "lease lost", or the same state).
   */
  async #write(fn: string, args: Record<string, unknown>, returns: Returns): Promise<unknown> {
    for (let attempt = 0;; attempt++) {
      try {
        return await this.#call(fn, args, returns);
      } catch (error) {
        const delay = this.#retryDelaysMs[attempt];
        if (!(error instanceof HostingError) || error.code !== "store_failed" || delay === undefined) {
          throw error;
        }
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  async enqueue(siteId: string): Promise<EnqueueResult> {
    return enqueueResult.parse(await this.#call("hosting_enqueue", { p_site_id: siteId }, "value"));
  }

  async claim(args: ClaimArgs): Promise<ClaimedJob[]> {
    const rows = await this.#write("hosting_claim_jobs", {
      p_worker: args.worker,
      p_server: args.server,
      p_lease_seconds: args.leaseSeconds,
      p_limit: args.limit,
      p_site_id: args.siteId ?? null,
      p_time_left_ms: args.timeLeftMs === undefined ? null : Math.max(0, Math.floor(args.timeLeftMs)),
      p_plan: args.plan ?? null,
      p_default_step_ms: args.defaultStepMs ?? DEFAULT_STEP_MS,
      p_first: args.first ?? false,
      p_default_server: args.defaultServer
        ? {
          host: args.defaultServer.host,
          port: args.defaultServer.port,
          ssh_user: args.defaultServer.user,
          host_key: args.defaultServer.hostKey,
        }
        : null,
    }, "rows");
    return z.array(claimedRow).parse(rows);
  }

  /** Renews the lease (while a step runs). False when the lease is lost. */
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

  /**
   * Ends the step that ran (if any) and starts the next (if any), renewing the lease: one statement. With
   * `domain` (a job's first step) the site takes ownership of that canonical domain, unless another site has it.
   */
  async advance(
    lease: Lease,
    leaseSeconds: number,
    transition: { done?: readonly StepEnd[]; start?: StepName; domain?: string; password?: string },
  ): Promise<Advance> {
    const answer = advanceAnswer.parse(
      await this.#write("hosting_advance", {
        p_job_id: lease.jobId,
        p_lease_token: lease.leaseToken,
        p_lease_seconds: leaseSeconds,
        p_done: endsJson(transition.done ?? [], this.#redact),
        p_start: transition.start ?? null,
        p_domain: transition.domain ?? null,
        p_password: transition.password ?? null,
      }, "value"),
    );
    // The password this step will use, from now on a secret of this process like the generated one.
    if (answer.ok && answer.credentials) this.#redactor.add(answer.credentials.password);
    return answer;
  }

  /**
   * The job's one exit from `running`, under the lease guard: the outcome (outcome.ts) and the step ends it
   * carries, in one statement. Every text passes the redactor.
   */
  async exit(lease: Lease, outcome: Outcome): Promise<ExitAnswer> {
    return exitAnswer.parse(
      await this.#write("hosting_exit", {
        p_job_id: lease.jobId,
        p_lease_token: lease.leaseToken,
        p_outcome: outcomeJson(outcome, this.#redact),
      }, "value"),
    );
  }

  /** A server with failures answered again: its circuit closes. */
  async serverOk(name: string): Promise<void> {
    await this.#call("hosting_server_ok", { p_name: name }, "value");
  }

  /** Every registered server (for the dry run's checks). */
  async servers(): Promise<ServerRow[]> {
    return z.array(serverRow).parse(await this.#call("hosting_servers", {}, "value"));
  }

  /** Asks for a site's removal (its row is kept and ends `removed`). */
  async remove(siteId: string): Promise<RemoveResult> {
    return removeResult.parse(await this.#call("hosting_remove", { p_site_id: siteId }, "value"));
  }

  /**
   * The site user's credentials (the password in clear: for the caller that uploads files). Throws
   * HostingError `not_found` or `credentials_unavailable` with the database's explanation when there are none.
   */
  async siteCredentials(siteId: string): Promise<SiteLogin> {
    try {
      const login = siteLogin.parse(
        await this.#call("hosting_site_credentials", { p_site_id: siteId }, "value"),
      );
      this.#redactor.add(login.password);
      return login;
    } catch (error) {
      throw credentialsError(error);
    }
  }

  async retry(target: { siteId: string } | { allFailed: true }): Promise<RetryResult> {
    const args = "siteId" in target
      ? { p_site_id: target.siteId, p_all_failed: false }
      : { p_site_id: null, p_all_failed: true };
    return retryResult.parse(await this.#call("hosting_retry", args, "value"));
  }

  /** One site by id or domain, with its job, journal and latest events. */
  async site(key: string, events?: number): Promise<SiteDetail> {
    return siteDetail.parse(
      await this.#call("hosting_site", { p_key: key, ...given("p_events", events) }, "value"),
    );
  }

  /** Jobs due now (read-only: nothing is claimed). */
  async due(limit?: number): Promise<DueJob[]> {
    return z.array(dueRow).parse(await this.#call("hosting_due", given("p_limit", limit), "rows"));
  }

  async status(limit?: number): Promise<StatusReport> {
    return statusReport.parse(await this.#call("hosting_status", given("p_limit", limit), "value"));
  }

  close(): Promise<void> {
    return this.#close();
  }
}

/** An argument sent only when given: else the SQL function's own default applies (stated there alone). */
function given(name: string, value: number | undefined): Record<string, number> {
  return value === undefined ? {} : { [name]: value };
}
