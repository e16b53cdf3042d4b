/**
 * The provisioning workflow: claim a job → run the steps its kind plans (steps.ts), each journaled → complete
 * or fail it, then claim the next due job while the worker's time allows.
 *
 * Resumable: a step the journal shows as done is skipped, so a job taken over after a crash continues where it
 * stopped. Every write goes through the lease; a worker that lost its lease stops without writing.
 *
 * Leases are short (HOSTING_LEASE_SECONDS) and renewed in the background while a step runs, so a dead worker's
 * slot is free again within one lease. On the normal path a provisioning job costs seven statements: the
 * claim, one transition per step boundary (the end of one step and the start of the next together; five steps),
 * and the completion with the last step's end.
 *
 * Time: the deadline is the earlier of the invocation's budget and the worker's own wall-clock limit, which on
 * Supabase counts from the worker's start, not the request's. A job is claimed only when its expected
 * remaining steps fit (the database estimates them from recent runs); a worker with too little time left gives
 * its slot up, and the claim rings the doorbell so another worker takes it.
 */
import { CloudPanel } from "./cloudpanel.ts";
import { DEFAULT_STEP_MS, LEASE_SECONDS } from "./defaults.ts";
import { type Domain, generatePassword, parseDomain } from "./domain.ts";
import { HostingError, toHostingError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { MatomoClient } from "./matomo.ts";
import type { RemoteShell } from "./remote.ts";
import {
  type Checks,
  type Completion,
  type KindDef,
  KINDS,
  PLANS,
  type StepDef,
  type StepOptions,
  STEPS,
  type StepTimeouts,
} from "./steps.ts";
import type {
  ClaimedJob,
  ClaimedServer,
  FailOutcome,
  Lease,
  SiteCredentials,
  StepEnd,
  StepName,
  Store,
} from "./store.ts";
import type { FleetConfig, ServerAddress } from "./config.ts";

export interface WorkflowDeps {
  store: Store;
  logger: Logger;
  /** Opens the SSH connection to a server; called at most once per server and invocation, at its first step. */
  connect: (server: ServerAddress) => Promise<RemoteShell>;
  /** Null when Matomo is not configured. */
  matomo: MatomoClient | null;
  /** The configured server (CLOUDPANEL_SSH_HOST), registered as `default` while no server is registered. */
  defaultServer?: FleetConfig["defaultServer"];
  timeouts: StepTimeouts;
  /**
   * The checks around the certificate on a job's server (DNS, the served certificate). Without it, DNS is not
   * checked and the served certificate is reported unreachable (tests of other paths).
   */
  checksFor?: (server: ClaimedServer) => Checks;
  /** What a removal does with the site's Matomo site (default: keep its analytics data). */
  matomoOnRemove?: StepOptions["matomoOnRemove"];
  /** Wall-clock time this invocation may spend. */
  budgetMs: number;
  /** When the worker itself must have stopped (its wall-clock limit), on `clock`'s scale. */
  workerDeadline?: number;
  /** The lease length; renewed every third of it while a step runs. Default `LEASE_SECONDS.default`. */
  leaseSeconds?: number;
  /** Milliseconds, monotonic. Tests pass a fake one. */
  clock?: () => number;
  /** Live invocations, so a shutdown can give their jobs back. */
  registry?: Set<Invocation>;
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
 * active: done, the site is active. removed: a removal is done. retrying: failed, queued again with backoff.
 * failed: gave up. released: time ran out (or the worker shut down), queued again without spending the attempt.
 * cancelled: the site is being removed, so the job stopped. waiting: its server could not be reached, so it
 * waits for the server's circuit to close, attempt kept. lease_lost: another worker owns the job now.
 * interrupted: the database could not be reached; the lease expires and the job resumes.
 */
export type JobStatus =
  | "waiting"
  | "active"
  | "removed"
  | "retrying"
  | "failed"
  | "released"
  | "cancelled"
  | "lease_lost"
  | "interrupted";

export interface JobOutcome {
  job_id: number;
  site_id: string;
  domain: string | null;
  kind: ClaimedJob["kind"];
  attempt: number;
  status: JobStatus;
  steps: StepOutcome[];
  doc_root?: string;
  matomo_site_id?: number | null;
  /** Analytics could not be set up; the site is active without it (and retried automatically if it can be). */
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
  /** Why the invocation stopped early (server unreachable, database down, shutdown), if it did. */
  stopped?: { code: string; message: string };
}

/** Kept back from the deadline for the writes after a step. */
export const RESERVE_MS = 3_000;
/** Kept back from the worker's wall-clock limit: the runtime stops the worker at the limit itself. */
export const WALL_CLOCK_MARGIN_MS = 5_000;
const SHUTDOWN_REASON = "The worker is shutting down; queued to continue.";

class LeaseLost extends Error {}
/**
 * The job's server could not be reached (refused, timed out, wrong host key, key refused): the server's
 * trouble, not the site's. Its circuit opens and the job waits for it without spending an attempt.
 */
class ServerTrouble extends Error {
  constructor(readonly failure: HostingError) {
    super(failure.message);
  }
}
/** The server paused: the job was given back until its circuit closes. */
class Paused extends Error {
  constructor(readonly failure: HostingError) {
    super(failure.message);
  }
}
class Released extends Error {}
class Shutdown extends Error {}
/** A removal of the site was queued after this job: the database cancelled it. */
class Cancelled extends Error {}
/**
 * Another site owns this canonical domain (or is still being removed with it); the database already failed
 * the job, or queued it again (`next`).
 */
class DomainTaken extends Error {
  constructor(
    readonly code: "domain_taken" | "domain_being_removed",
    message: string,
    readonly next?: FailOutcome,
  ) {
    super(message);
  }
}
/** Without checks configured: no public addresses (DNS is not checked), and no served certificate to see. */
const NO_CHECKS: Checks = {
  publicIps: [],
  dnsPointsTo: () => Promise.reject(new HostingError("internal", "no DNS check configured")),
  servedCertificate: () => Promise.reject(new HostingError("https_unreachable", "no HTTPS check configured")),
};

/** Said once per process: where the database has no Vault, site passwords are not kept. */
let vaultAbsenceSaid = false;
/** A step failed; `end` is its journal entry, written with the job's failure. */
class StepFailed extends Error {
  constructor(readonly failure: HostingError, readonly end: StepEnd, readonly outcome: StepOutcome) {
    super(failure.message);
  }
}

export class Invocation {
  readonly worker = `ef-${crypto.randomUUID().slice(0, 8)}`;
  readonly #deps: WorkflowDeps;
  readonly #log: Logger;
  readonly #clock: () => number;
  readonly #deadline: number;
  readonly #leaseSeconds: number;
  /** Aborted on shutdown: running steps stop, their jobs are given back. */
  readonly #shutdown = new AbortController();
  /** One SSH connection per server, opened at the first step that needs it. */
  readonly #shells = new Map<string, Promise<RemoteShell>>();
  #stopped: RunResult["stopped"];
  #onProgress: RunOptions["onProgress"];
  #answeredKick = false;
  #running: Promise<unknown> = Promise.resolve();

  constructor(deps: WorkflowDeps) {
    this.#deps = deps;
    this.#clock = deps.clock ?? (() => performance.now());
    const budgetEnd = this.#clock() + deps.budgetMs;
    this.#deadline = deps.workerDeadline === undefined
      ? budgetEnd
      : Math.min(budgetEnd, deps.workerDeadline - WALL_CLOCK_MARGIN_MS);
    this.#log = deps.logger.child({ worker: this.worker });
    this.#leaseSeconds = deps.leaseSeconds ?? LEASE_SECONDS.default;
  }

  get leaseSeconds(): number {
    return this.#leaseSeconds;
  }

  /** Stops claiming and gives running jobs back at once, without spending their attempts. */
  shutdown(reason: string): void {
    if (this.#shutdown.signal.aborted) return;
    this.#stop(
      new HostingError("interrupted", `shutdown: ${reason}`, {
        publicMessage: `The worker is shutting down (${reason}); unfinished jobs were given back.`,
      }),
    );
    this.#shutdown.abort(new Shutdown(reason));
  }

  /** Settles when the current run has ended (for a shutdown to wait on). */
  get finished(): Promise<void> {
    return this.#running.then(() => {}, () => {});
  }

  run(options: RunOptions): Promise<RunResult> {
    const run = this.#run(options);
    this.#running = run;
    return run;
  }

  async #run(options: RunOptions): Promise<RunResult> {
    this.#onProgress = options.onProgress;
    this.#deps.registry?.add(this);
    const outcomes: JobOutcome[] = [];
    let claimed = 0;
    let siteFirst = options.siteId;

    const lane = async () => {
      while (!this.#stopped) {
        if (options.maxJobs !== undefined && claimed >= options.maxJobs) break;
        const siteId = siteFirst;
        siteFirst = undefined;
        const first = !this.#answeredKick;
        this.#answeredKick = true;
        let job: ClaimedJob | undefined;
        try {
          [job] = await this.#deps.store.claim({
            worker: this.worker,
            server: this.#deps.defaultServer?.host ?? "fleet",
            defaultServer: this.#deps.defaultServer ?? null,
            leaseSeconds: this.#leaseSeconds,
            limit: 1,
            siteId,
            timeLeftMs: Math.max(0, this.#remaining() - RESERVE_MS),
            plan: PLANS,
            defaultStepMs: DEFAULT_STEP_MS,
            first,
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
      this.#deps.registry?.delete(this);
      await this.#closeShells();
    }
    return { outcomes, stopped: this.#stopped };
  }

  #remaining(): number {
    return this.#deadline - this.#clock();
  }

  #stop(error: HostingError): void {
    if (this.#stopped) return;
    this.#stopped = { code: error.code, message: error.publicMessage };
    this.#log[error.code === "interrupted" ? "warn" : "error"]("invocation stops claiming jobs", {
      code: error.code,
      detail: error.message,
    });
  }

  /** The CloudPanel client of one job, on its server's connection (opened once per server and invocation). */
  #cloudPanel(log: Logger, server: ClaimedServer): () => CloudPanel {
    let client: CloudPanel | undefined;
    return () =>
      client ??= new CloudPanel(() => {
        let shell = this.#shells.get(server.name);
        if (!shell) {
          shell = this.#connect(server);
          this.#shells.set(server.name, shell);
        }
        return shell;
      }, log);
  }

  async #connect(server: ClaimedServer): Promise<RemoteShell> {
    let shell: RemoteShell;
    try {
      shell = await this.#deps.connect(server);
    } catch (error) {
      // Not kept: the next job on this server (once its circuit closes) connects again.
      this.#shells.delete(server.name);
      throw new ServerTrouble(toHostingError(error));
    }
    // It answered again after failures: its circuit closes (a best effort; the next failure would reopen it).
    if (server.failures > 0) await this.#deps.store.serverOk(server.name).catch(() => {});
    return shell;
  }

  /** Forgets a server's connection that broke, so the next job on it connects again. */
  #dropShell(name: string): void {
    const shell = this.#shells.get(name);
    this.#shells.delete(name);
    shell?.then((s) => s.close(), () => {}).catch(() => {});
  }

  async #closeShells(): Promise<void> {
    const shells = [...this.#shells.values()];
    this.#shells.clear();
    for (const shell of shells) await (await shell.catch(() => null))?.close().catch(() => {});
  }

  async #runJob(job: ClaimedJob): Promise<JobOutcome> {
    const started = this.#clock();
    const log = this.#log.child({ site: job.siteId, job: job.jobId, domain: job.domain ?? undefined });
    const lease: Lease = { jobId: job.jobId, leaseToken: job.leaseToken };
    const outcome: JobOutcome = {
      job_id: job.jobId,
      site_id: job.siteId,
      domain: job.domain,
      kind: job.kind,
      attempt: job.attempt,
      status: "active",
      steps: [],
      duration_ms: 0,
    };
    this.#onProgress?.({ kind: "job_started", job });
    log.info("job started", { kind: job.kind, attempt: job.attempt, max_attempts: job.maxAttempts });

    try {
      // Validated before anything reaches the server; an invalid domain never opens a connection. The text
      // judged must be exactly the stored text, not what a driver made of it.
      if (!job.domainIntact) {
        throw new HostingError("invalid_domain", "the domain read differs from the stored text", {
          publicMessage:
            "The domain is invalid: it contains a character that does not survive being read (such as a byte order mark or another invisible character); write it again without it.",
        });
      }
      const domain = parseDomain(job.domain);
      const kind = KINDS[job.kind];
      const cloudPanel = this.#cloudPanel(log, job.server);
      const checks = this.#deps.checksFor?.(job.server) ?? NO_CHECKS;
      const results: Partial<Record<StepName, Record<string, unknown>>> = {};
      /** The end of the step that ran last, written with the next transition. */
      let pending: StepEnd[] = [];
      let retryable = false;

      for (const name of kind.steps) {
        const def = STEPS[name];
        const prior = job.steps[name];
        if (prior?.state === "done") {
          results[name] = prior.result;
          outcome.steps.push({ step: name, status: "already_done", duration_ms: 0 });
          continue;
        }
        const skip = def.skip({ matomo: this.#deps.matomo, options: this.#stepOptions, checks });
        if (skip) {
          pending.push({
            step: name,
            state: "skipped",
            code: skip.code,
            message: skip.message,
            level: skip.level,
          });
          outcome.steps.push({ step: name, status: "skipped", duration_ms: 0, code: skip.code });
          if (skip.level === "warn") outcome.warning = { code: skip.code, message: skip.message };
          continue;
        }
        const ran = await this.#step({
          job,
          lease,
          log,
          def,
          kind,
          domain,
          cloudPanel,
          checks,
          results,
          pending,
        });
        pending = [ran.end];
        outcome.steps.push(ran.outcome);
        if (ran.end.state === "done") {
          results[name] = ran.end.result;
          continue;
        }
        // An optional step failed in a job that may go on without it: the site goes active without it.
        const failure = ran.failure!;
        outcome.warning = {
          code: failure.code,
          message: failure.transient
            ? `${failure.publicMessage} The site is active without analytics; it is retried automatically.`
            : `${failure.publicMessage} The site is active without analytics; fix the cause, then retry it.`,
        };
        retryable ||= failure.transient;
        log.warn("optional step failed; the site goes active without it", {
          step: name,
          code: failure.code,
          backfill: failure.transient,
        });
      }

      const completion = kind.complete({ domain, results, warning: outcome.warning, retryable });
      if (!await this.#complete(lease, completion, pending)) throw new LeaseLost();
      if (completion.type === "site") {
        outcome.status = "active";
        outcome.doc_root = completion.docRoot;
        outcome.matomo_site_id = completion.matomoSiteId;
        log.info("job succeeded", {
          doc_root: completion.docRoot,
          matomo_site_id: completion.matomoSiteId,
          backfill: completion.backfillAnalytics,
        });
      } else {
        outcome.status = "removed";
        log.info("site removed");
      }
    } catch (error) {
      await this.#settle(error, job, lease, outcome, log);
    }

    outcome.duration_ms = Math.round(this.#clock() - started);
    this.#onProgress?.({ kind: "job_finished", job, outcome });
    return outcome;
  }

  /** The job's last statement: the site goes active, or its removal is done (with the last step's end). */
  #complete(lease: Lease, completion: Completion, done: StepEnd[]): Promise<boolean> {
    return completion.type === "site"
      ? this.#deps.store.complete(lease, {
        docRoot: completion.docRoot,
        matomoSiteId: completion.matomoSiteId,
        message: completion.message,
        done,
        backfillAnalytics: completion.backfillAnalytics,
        certificateExpiresAt: completion.certificateExpiresAt,
      })
      : this.#deps.store.completeRemoval(lease, { message: completion.message, done });
  }

  get #stepOptions(): StepOptions {
    return { matomoOnRemove: this.#deps.matomoOnRemove ?? "keep" };
  }

  /** Turns a job's failure into its next state: retry, fail, or nothing (lease lost, released, store down). */
  async #settle(
    error: unknown,
    job: ClaimedJob,
    lease: Lease,
    outcome: JobOutcome,
    log: Logger,
  ): Promise<void> {
    if (error instanceof LeaseLost) {
      outcome.status = "lease_lost";
      log.warn("lease lost: another worker owns this job now; stopping without writing");
      return;
    }
    if (error instanceof Paused) {
      outcome.status = "waiting";
      outcome.error = { code: error.failure.code, message: error.failure.publicMessage };
      log.warn("server unreachable: the job waits for it, attempt kept", {
        server: job.server.name,
        code: error.failure.code,
        detail: error.failure.message,
      });
      return;
    }
    if (error instanceof Cancelled) {
      outcome.status = "cancelled";
      log.info("job cancelled: the site is being removed");
      return;
    }
    if (error instanceof DomainTaken) {
      outcome.error = { code: error.code, message: error.message };
      if (error.next?.state === "queued") {
        outcome.status = "retrying";
        outcome.next_run_at = error.next.run_at;
        log.warn("the domain is still being removed for another site; retried later", { code: error.code });
      } else {
        outcome.status = "failed";
        log.error("job failed: the domain belongs to another site", { code: error.code });
      }
      return;
    }
    if (error instanceof Released) {
      outcome.status = "released";
      log.info("job given back to continue in another invocation", { reason: error.message });
      return;
    }
    if (error instanceof StepFailed) outcome.steps.push(error.outcome);
    const failure = error instanceof StepFailed ? error.failure : toHostingError(error);
    outcome.error = { code: failure.code, message: failure.publicMessage };
    if (failure.code === "store_failed") {
      outcome.status = "interrupted";
      this.#stop(failure);
      return;
    }
    // The connection broke mid-command: the next job on this server connects again.
    if (failure.code === "ssh_unreachable") this.#dropShell(job.server.name);
    try {
      const done = error instanceof StepFailed ? error.end : undefined;
      // Waiting for DNS is not a failure of the work: its own schedule, no attempt spent (bounded in SQL).
      const next = failure.code === "dns_not_ready"
        ? await this.#deps.store.waitForDns(lease, {
          publicMessage: failure.publicMessage,
          internalMessage: failure.message,
          done,
        })
        : await this.#deps.store.fail(lease, {
          code: failure.code,
          publicMessage: failure.publicMessage,
          internalMessage: failure.message,
          permanent: !failure.transient,
          attemptLimit: failure.attemptLimit,
          done,
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

  /**
   * One step: started (with the previous step's end, one statement), run with a timeout that fits the deadline
   * while the lease is renewed in the background, and its end returned for the next transition. An optional
   * step's failure in a job that may go on without it is returned as a `failed` end; any other failure is thrown.
   */
  async #step(
    { job, lease, log, def, kind, domain, cloudPanel, checks, results, pending }: {
      job: ClaimedJob;
      lease: Lease;
      log: Logger;
      def: StepDef;
      kind: KindDef;
      domain: Domain;
      cloudPanel: () => CloudPanel;
      checks: Checks;
      results: Partial<Record<StepName, Record<string, unknown>>>;
      pending: StepEnd[];
    },
  ): Promise<{ end: StepEnd; outcome: StepOutcome; failure?: HostingError }> {
    const store = this.#deps.store;
    const step = def.name;
    const timeoutMs = def.timeoutMs(this.#deps.timeouts);
    const expected = job.estimates[step] ?? DEFAULT_STEP_MS;
    const left = this.#remaining() - RESERVE_MS;
    if (this.#shutdown.signal.aborted) await this.#release(lease, SHUTDOWN_REASON, pending);
    if (left < Math.min(expected, timeoutMs)) {
      await this.#release(lease, `Time budget spent before ${step}; queued to continue.`, pending);
    }
    const effective = Math.min(timeoutMs, left);
    // A password is registered before it goes anywhere, so no log line or write can carry it.
    const candidate = def.password ? generatePassword() : undefined;
    if (candidate) log.redactor.add(candidate);
    const advanced = await store.advance(lease, this.#leaseSeconds, {
      done: pending,
      start: step,
      // The first step of a kind that owns its domain takes ownership of the canonical domain.
      domain: kind.ownsDomain && kind.steps[0] === step ? domain : undefined,
      password: candidate,
    });
    if (!advanced.ok && advanced.reason === "domain_taken") {
      throw new DomainTaken(advanced.code, advanced.message, advanced.next);
    }
    if (!advanced.ok && advanced.reason === "cancelled") throw new Cancelled();
    if (!advanced.ok) throw new LeaseLost();
    const credentials = def.password ? this.#credentials(advanced.credentials, candidate!, log) : undefined;
    this.#onProgress?.({ kind: "step_started", job, step });

    const started = this.#clock();
    const lost = new AbortController();
    // A step whose time was cut to the deadline stops there, whatever its client does with the timeout.
    const atDeadline = effective < timeoutMs ? AbortSignal.timeout(Math.max(0, effective)) : null;
    const signal = AbortSignal.any([lost.signal, this.#shutdown.signal, ...(atDeadline ? [atDeadline] : [])]);
    const renewal = this.#renewWhileRunning(lease, step, lost);
    try {
      const done = await abortable(
        def.run(
          { job, domain, log, cloudPanel, matomo: this.#deps.matomo, results, credentials, checks, signal },
          effective,
        ),
        signal,
      );
      const duration = Math.round(this.#clock() - started);
      log.info("step done", { step, duration_ms: duration });
      const outcome: StepOutcome = { step, status: "done", duration_ms: duration };
      this.#onProgress?.({ kind: "step_finished", job, outcome });
      return {
        end: {
          step,
          state: "done",
          result: done.result,
          code: `${step}_done`,
          message: `${done.message} (${duration} ms)`,
          durationMs: duration,
        },
        outcome,
      };
    } catch (error) {
      if (lost.signal.aborted) throw new LeaseLost();
      const duration = Math.round(this.#clock() - started);
      const cut = (reason: string) => ({
        step,
        state: "failed" as const,
        code: "interrupted",
        message: `${step} stopped after ${duration} ms: ${reason}`,
        level: "warn" as const,
        durationMs: duration,
      });
      if (this.#shutdown.signal.aborted) await this.#release(lease, SHUTDOWN_REASON, [cut("shutdown")]);
      if (error instanceof ServerTrouble) {
        const paused = await store.serverTrouble(lease, {
          code: error.failure.code,
          message: error.failure.publicMessage,
          done: [cut(`server ${job.server.name} unreachable (${error.failure.code})`)],
        });
        if (!paused) throw new LeaseLost();
        throw new Paused(error.failure);
      }
      const failure = toHostingError(error);
      // A timeout shortened by our own deadline says nothing about the server: continue elsewhere, attempt kept.
      if (atDeadline?.aborted || (failure.code === "ssh_timeout" && effective < timeoutMs)) {
        await this.#release(lease, `Time budget spent during ${step}; queued to continue.`, [
          cut("time budget"),
        ]);
      }
      const end: StepEnd = {
        step,
        state: "failed",
        code: failure.code,
        message: `${step} failed after ${duration} ms: ${failure.message}`,
        level: failure.transient ? "warn" : "error",
        durationMs: duration,
      };
      const outcome: StepOutcome = {
        step,
        status: "failed",
        duration_ms: duration,
        code: failure.code,
        message: failure.publicMessage,
      };
      this.#onProgress?.({ kind: "step_finished", job, outcome });
      const internal = failure.code === "store_failed" || failure.code === "internal";
      if (def.optional && kind.allowsOptionalFailure && !internal) return { end, outcome, failure };
      throw new StepFailed(failure, end, outcome);
    } finally {
      clearInterval(renewal);
    }
  }

  /** The password the step uses, as the database answered (a store without the answer: the candidate, unkept). */
  #credentials(answer: SiteCredentials | undefined, candidate: string, log: Logger): SiteCredentials {
    const credentials = answer ?? { password: candidate, prior: false, stored: false };
    log.redactor.add(credentials.password);
    if (!credentials.stored && !vaultAbsenceSaid) {
      vaultAbsenceSaid = true;
      log.warn(
        "this database has no Vault: site-user passwords are not stored, and hosting_site_credentials answers an error",
      );
    }
    return credentials;
  }

  /**
   * Renews the lease every third of its length while a step runs. A renewal the database refuses means another
   * worker owns the job: the step is aborted. Renewals that fail to reach the database are retried until the
   * lease would have expired; then the step is aborted too, as the job may already be someone else's.
   */
  #renewWhileRunning(lease: Lease, step: StepName, lost: AbortController): number {
    const leaseMs = this.#leaseSeconds * 1000;
    let expiresAt = this.#clock() + leaseMs;
    let inFlight = false;
    /** Gives the step up shortly before the lease could have expired unrenewed. */
    const giveUpIfExpiring = () => {
      if (this.#clock() >= expiresAt - leaseMs / 6) lost.abort(new LeaseLost());
    };
    return setInterval(async () => {
      if (lost.signal.aborted) return;
      // A renewal stuck on a stalled connection must not keep the step running past the lease it may have lost.
      if (inFlight) return giveUpIfExpiring();
      inFlight = true;
      const sent = this.#clock();
      try {
        if (await this.#deps.store.heartbeat(lease, this.#leaseSeconds, step)) expiresAt = sent + leaseMs;
        else lost.abort(new LeaseLost());
      } catch (error) {
        this.#log.warn("lease renewal failed", { step, code: toHostingError(error).code });
        giveUpIfExpiring();
      } finally {
        inFlight = false;
      }
    }, leaseMs / 3);
  }

  async #release(lease: Lease, reason: string, ends: StepEnd[]): Promise<never> {
    if (!await this.#deps.store.release(lease, reason, ends)) throw new LeaseLost();
    throw new Released(reason);
  }
}

/** Settles with the work, or rejects as soon as the signal aborts (work that ignores the signal is left behind). */
function abortable<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    work.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
