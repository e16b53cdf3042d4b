/**
 * The provisioning workflow (design §3): claim a job → run its steps, each journaled → complete or fail it,
 * then claim the next due job while the invocation's time budget allows.
 *
 * Resumable: a step the journal shows as done is skipped, so a job taken over after a crash continues where
 * it stopped. Every write goes through the lease; a worker that lost its lease stops without writing.
 */
import { CloudPanel } from "./cloudpanel.ts";
import { type Domain, parseDomain } from "./domain.ts";
import { type HostingError, toHostingError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { MatomoClient } from "./matomo.ts";
import type { RemoteShell } from "./remote.ts";
import type { ClaimedJob, Lease, StepName, Store } from "./store.ts";

export interface WorkflowDeps {
  store: Store;
  logger: Logger;
  /** Opens the SSH connection; called at most once per invocation, at the first CloudPanel step. */
  connect: () => Promise<RemoteShell>;
  /** Null when Matomo is not configured. */
  matomo: MatomoClient | null;
  /** The CloudPanel server's identity, for the per-server cap (host:port). */
  server: string;
  timeouts: { siteMs: number; certificateMs: number; matomoMs: number };
  /** Wall-clock time this invocation may spend. */
  budgetMs: number;
  /** Milliseconds, monotonic. Tests pass a fake one. */
  clock?: () => number;
}

export type StepStatus = "done" | "already_done" | "skipped" | "failed";
export interface StepOutcome {
  step: StepName;
  status: StepStatus;
  duration_ms: number;
  code?: string;
  /** Public text only. */
  message?: string;
}

/**
 * active: done. retrying: failed, queued again with backoff. failed: gave up. released: time ran out before a
 * step, queued again without spending the attempt. lease_lost: another worker owns the job now.
 * interrupted: the database could not be reached; the lease expires and the job resumes.
 */
export type JobStatus = "active" | "retrying" | "failed" | "released" | "lease_lost" | "interrupted";

export interface JobOutcome {
  job_id: number;
  site_id: string;
  domain: string | null;
  attempt: number;
  status: JobStatus;
  steps: StepOutcome[];
  doc_root?: string;
  matomo_site_id?: number | null;
  /** Analytics could not be set up; the site is active without it. */
  warning?: { code: string; message: string };
  error?: { code: string; message: string };
  next_run_at?: string;
  duration_ms: number;
}

export type Progress =
  | { kind: "job_started"; job: ClaimedJob }
  | { kind: "step_started"; job: ClaimedJob; step: StepName }
  | { kind: "step_finished"; job: ClaimedJob; outcome: StepOutcome }
  | { kind: "job_finished"; job: ClaimedJob; outcome: JobOutcome };

export interface RunOptions {
  /** Claim this site's job first. */
  siteId?: string;
  /** Keep claiming due jobs after the first while time is left. */
  drain: boolean;
  /** Jobs run at once in this invocation (the per-server cap still applies across invocations). */
  concurrency?: number;
  /** Stop after this many jobs. */
  maxJobs?: number;
  onProgress?: (event: Progress) => void;
}

export interface RunResult {
  outcomes: JobOutcome[];
  /** Why the invocation stopped early (server unreachable, database down), if it did. */
  stopped?: { code: string; message: string };
}

/** A step does not start with less time than this left in the budget. */
export const MIN_STEP_MS = 10_000;
/** Kept back from the budget for the writes after a step. */
const RESERVE_MS = 3_000;
/** Errors after which no further job is claimed in this invocation: the next would fail the same way. */
const CONNECTION_CODES = new Set([
  "ssh_unreachable",
  "ssh_timeout",
  "ssh_host_key_mismatch",
  "ssh_auth_failed",
]);

class LeaseLost extends Error {}
class Released extends Error {}

export class Invocation {
  readonly worker = `ef-${crypto.randomUUID().slice(0, 8)}`;
  readonly #deps: WorkflowDeps;
  readonly #log: Logger;
  readonly #clock: () => number;
  readonly #deadline: number;
  readonly #leaseSeconds: number;
  #shell: Promise<RemoteShell> | null = null;
  #stopped: RunResult["stopped"];
  #onProgress: RunOptions["onProgress"];

  constructor(deps: WorkflowDeps) {
    this.#deps = deps;
    this.#clock = deps.clock ?? (() => performance.now());
    this.#deadline = this.#clock() + deps.budgetMs;
    this.#log = deps.logger.child({ worker: this.worker });
    // The lease outlasts the longest step; it is renewed before each step.
    const longest = Math.max(deps.timeouts.siteMs, deps.timeouts.certificateMs, deps.timeouts.matomoMs);
    this.#leaseSeconds = Math.min(3600, Math.ceil(longest / 1000) + 60);
  }

  get leaseSeconds(): number {
    return this.#leaseSeconds;
  }

  async run(options: RunOptions): Promise<RunResult> {
    this.#onProgress = options.onProgress;
    const outcomes: JobOutcome[] = [];
    let claimed = 0;
    let siteFirst = options.siteId;

    const lane = async () => {
      while (!this.#stopped) {
        if (this.#remaining() < MIN_STEP_MS + RESERVE_MS) break;
        if (options.maxJobs !== undefined && claimed >= options.maxJobs) break;
        const siteId = siteFirst;
        siteFirst = undefined;
        let job: ClaimedJob | undefined;
        try {
          [job] = await this.#deps.store.claim({
            worker: this.worker,
            server: this.#deps.server,
            leaseSeconds: this.#leaseSeconds,
            limit: 1,
            siteId,
          });
        } catch (error) {
          this.#stop(toHostingError(error));
          break;
        }
        if (!job) {
          // The asked-for site is not claimable (not due, running elsewhere, cap reached): drain the rest.
          if (siteId !== undefined && options.drain) continue;
          break;
        }
        claimed++;
        outcomes.push(await this.#runJob(job));
        if (!options.drain) break;
      }
    };

    try {
      await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 1) }, lane));
    } finally {
      await this.#closeShell();
    }
    return { outcomes, stopped: this.#stopped };
  }

  #remaining(): number {
    return this.#deadline - this.#clock();
  }

  #stop(error: HostingError): void {
    if (this.#stopped) return;
    this.#stopped = { code: error.code, message: error.publicMessage };
    this.#log.error("invocation stops claiming jobs", { code: error.code, detail: error.message });
  }

  #cloudPanel(log: Logger): CloudPanel {
    return new CloudPanel(() => {
      this.#shell ??= this.#deps.connect().catch((error) => {
        const failure = toHostingError(error);
        if (CONNECTION_CODES.has(failure.code)) this.#stop(failure);
        throw failure;
      });
      return this.#shell;
    }, log);
  }

  async #closeShell(): Promise<void> {
    const shell = await this.#shell?.catch(() => null);
    await shell?.close().catch(() => {});
  }

  async #runJob(job: ClaimedJob): Promise<JobOutcome> {
    const started = this.#clock();
    const log = this.#log.child({ site: job.siteId, job: job.jobId, domain: job.domain ?? undefined });
    const lease: Lease = { jobId: job.jobId, leaseToken: job.leaseToken };
    const outcome: JobOutcome = {
      job_id: job.jobId,
      site_id: job.siteId,
      domain: job.domain,
      attempt: job.attempt,
      status: "active",
      steps: [],
      duration_ms: 0,
    };
    this.#onProgress?.({ kind: "job_started", job });
    log.info("job started", { attempt: job.attempt, max_attempts: job.maxAttempts });

    try {
      // Validated before anything reaches the server; an invalid domain never opens a connection.
      const domain = parseDomain(job.domain);
      const cloudPanel = this.#cloudPanel(log);
      const site = await this.#step(
        job,
        lease,
        outcome,
        log,
        "cloudpanel_site",
        this.#deps.timeouts.siteMs,
        async (ms) => {
          const result = await cloudPanel.addStaticSite(domain, { timeoutMs: ms });
          return {
            result: { site_user: result.siteUser, doc_root: result.docRoot, created: result.created },
            message: result.created
              ? "Site created on CloudPanel."
              : "Site already existed on CloudPanel; its document root is inferred from the site user.",
          };
        },
      );
      const docRoot = String(site.doc_root);
      await this.#step(
        job,
        lease,
        outcome,
        log,
        "ssl_certificate",
        this.#deps.timeouts.certificateMs,
        async (ms) => {
          await cloudPanel.installCertificate(domain, { timeoutMs: ms });
          return {
            result: { installed_at: new Date().toISOString() },
            message: "Let's Encrypt certificate installed.",
          };
        },
      );
      const matomoSiteId = await this.#analytics(job, lease, outcome, log, domain);

      const summary = matomoSiteId === null
        ? `Site is active without analytics (${outcome.warning?.code ?? "matomo_site"}).`
        : `Site is active; Matomo site ${matomoSiteId}.`;
      if (!await this.#deps.store.complete(lease, docRoot, matomoSiteId, summary)) throw new LeaseLost();
      outcome.status = "active";
      outcome.doc_root = docRoot;
      outcome.matomo_site_id = matomoSiteId;
      log.info("job succeeded", { doc_root: docRoot, matomo_site_id: matomoSiteId });
    } catch (error) {
      await this.#settle(error, lease, outcome, log);
    }

    outcome.duration_ms = Math.round(this.#clock() - started);
    this.#onProgress?.({ kind: "job_finished", job, outcome });
    return outcome;
  }

  /** Turns a job's failure into its next state: retry, fail, or nothing (lease lost, released, store down). */
  async #settle(error: unknown, lease: Lease, outcome: JobOutcome, log: Logger): Promise<void> {
    if (error instanceof LeaseLost) {
      outcome.status = "lease_lost";
      log.warn("lease lost: another worker owns this job now; stopping without writing");
      return;
    }
    if (error instanceof Released) {
      outcome.status = "released";
      log.info("time budget spent: job queued again to continue in another invocation");
      return;
    }
    const failure = toHostingError(error);
    outcome.error = { code: failure.code, message: failure.publicMessage };
    if (failure.code === "store_failed") {
      outcome.status = "interrupted";
      this.#stop(failure);
      return;
    }
    // The connection broke mid-command: later jobs of this invocation would meet the same dead connection.
    if (failure.code === "ssh_unreachable") this.#stop(failure);
    try {
      const next = await this.#deps.store.fail(lease, {
        code: failure.code,
        publicMessage: failure.publicMessage,
        internalMessage: log.redact(failure.message),
        permanent: !failure.transient,
      });
      if (next === null) {
        outcome.status = "lease_lost";
      } else if (next.state === "failed") {
        outcome.status = "failed";
      } else {
        outcome.status = "retrying";
        outcome.next_run_at = next.run_at;
      }
      log[next?.state === "failed" ? "error" : "warn"]("job attempt failed", {
        code: failure.code,
        transient: failure.transient,
        next: next?.state ?? "lease_lost",
        detail: failure.message,
      });
    } catch (storeError) {
      outcome.status = "interrupted";
      this.#stop(toHostingError(storeError));
    }
  }

  /** The analytics step never fails the job: without Matomo the site goes active with a visible warning. */
  async #analytics(job: ClaimedJob, lease: Lease, outcome: JobOutcome, log: Logger, domain: Domain) {
    const matomo = this.#deps.matomo;
    const done = job.steps.matomo_site;
    if (!matomo && done?.state !== "done") {
      const message =
        "Matomo is not configured (MATOMO_API_URL, MATOMO_API_TOKEN); the site has no analytics.";
      if (
        !await this.#deps.store.recordStep(lease, {
          step: "matomo_site",
          state: "skipped",
          code: "matomo_not_configured",
          message,
          level: "warn",
        })
      ) throw new LeaseLost();
      outcome.steps.push({
        step: "matomo_site",
        status: "skipped",
        duration_ms: 0,
        code: "matomo_not_configured",
      });
      outcome.warning = { code: "matomo_not_configured", message };
      return null;
    }
    try {
      const result = await this.#step(
        job,
        lease,
        outcome,
        log,
        "matomo_site",
        this.#deps.timeouts.matomoMs,
        async () => {
          const site = await matomo!.ensureSite(domain);
          return {
            result: { matomo_site_id: site.idSite, reused: site.reused },
            message: site.reused ? `Matomo site ${site.idSite} reused.` : `Matomo site ${site.idSite} added.`,
          };
        },
      );
      return Number(result.matomo_site_id);
    } catch (error) {
      if (error instanceof LeaseLost || error instanceof Released) throw error;
      const failure = toHostingError(error);
      if (failure.code === "store_failed") throw failure;
      outcome.warning = {
        code: failure.code,
        message: `${failure.publicMessage} The site is active without analytics; retry it later.`,
      };
      log.warn("analytics not set up; the site goes active without it", { code: failure.code });
      return null;
    }
  }

  /**
   * One journaled step: skipped when the journal says done; otherwise lease renewed, `started` written, the
   * work run with a timeout that fits the budget, then `done` (with its result) or `failed` written.
   */
  async #step(
    job: ClaimedJob,
    lease: Lease,
    outcome: JobOutcome,
    log: Logger,
    step: StepName,
    timeoutMs: number,
    work: (timeoutMs: number) => Promise<{ result: Record<string, unknown>; message: string }>,
  ): Promise<Record<string, unknown>> {
    const store = this.#deps.store;
    const prior = job.steps[step];
    if (prior?.state === "done") {
      outcome.steps.push({ step, status: "already_done", duration_ms: 0 });
      log.debug("step already done", { step });
      return prior.result;
    }

    const left = this.#remaining() - RESERVE_MS;
    if (left < MIN_STEP_MS) {
      await this.#release(lease, `Time budget spent before ${step}; queued to continue.`);
    }
    const effective = Math.min(timeoutMs, left);
    if (!await store.heartbeat(lease, this.#leaseSeconds, step)) throw new LeaseLost();
    if (!await store.recordStep(lease, { step, state: "started" })) throw new LeaseLost();
    this.#onProgress?.({ kind: "step_started", job, step });

    const started = this.#clock();
    let done: { result: Record<string, unknown>; message: string };
    try {
      done = await work(effective);
    } catch (error) {
      const failure = toHostingError(error);
      const duration = Math.round(this.#clock() - started);
      // A timeout shortened by our own budget says nothing about the server: continue elsewhere, attempt kept.
      if (failure.code === "ssh_timeout" && effective < timeoutMs) {
        await this.#release(lease, `Time budget spent during ${step}; queued to continue.`);
      }
      if (
        !await store.recordStep(lease, {
          step,
          state: "failed",
          code: failure.code,
          message: `${step} failed after ${duration} ms: ${log.redact(failure.message)}`,
          level: failure.transient ? "warn" : "error",
        })
      ) throw new LeaseLost();
      const stepOutcome: StepOutcome = {
        step,
        status: "failed",
        duration_ms: duration,
        code: failure.code,
        message: failure.publicMessage,
      };
      outcome.steps.push(stepOutcome);
      this.#onProgress?.({ kind: "step_finished", job, outcome: stepOutcome });
      throw failure;
    }
    const duration = Math.round(this.#clock() - started);
    if (
      !await store.recordStep(lease, {
        step,
        state: "done",
        result: done.result,
        code: `${step}_done`,
        message: `${done.message} (${duration} ms)`,
      })
    ) throw new LeaseLost();
    const stepOutcome: StepOutcome = { step, status: "done", duration_ms: duration };
    outcome.steps.push(stepOutcome);
    this.#onProgress?.({ kind: "step_finished", job, outcome: stepOutcome });
    log.info("step done", { step, duration_ms: duration });
    return done.result;
  }

  async #release(lease: Lease, reason: string): Promise<never> {
    if (!await this.#deps.store.release(lease, reason)) throw new LeaseLost();
    throw new Released();
  }
}
