/**
 * The provisioning workflow: claim a job → run the steps its kind plans (steps.ts), each journaled → end it
 * with one outcome (outcome.ts), then claim the next due job while the worker's time allows.
 *
 * Resumable: a step the journal shows as done is skipped, so a job taken over after a crash continues where it
 * stopped. Every write goes through the lease; a worker that lost its lease stops without writing.
 *
 * Leases are short (HOSTING_LEASE_SECONDS) and renewed in the background while a step runs, so a dead worker's
 * slot is free again within one lease. On the normal path a provisioning job costs seven statements: the
 * claim, one transition per step boundary (the end of one step and the start of the next together; five steps),
 * and the exit with the last step's end.
 *
 * A job stops in one of two ways: with an outcome, a value the store's exit writes in one guarded statement
 * (active, removed, fail, snooze, release, server trouble), or settled already: the database ended it at a
 * step boundary (cancelled, domain taken), the lease is lost, or the database cannot be reached.
 *
 * Time: the deadline is the earlier of the invocation's budget and the worker's own wall-clock limit, which on
 * Supabase counts from the worker's start, not the request's. A job is claimed only when its expected
 * remaining steps fit (the database estimates them from recent runs); a worker with too little time left gives
 * its slot up, and the claim rings the doorbell so another worker takes it.
 */
import { CloudPanel } from "./cloudpanel.ts";
import { Connections } from "./connections.ts";
import { DEFAULT_STEP_MS, LEASE_SECONDS } from "./defaults.ts";
import { generatePassword, parseDomain } from "./domain.ts";
import { type ErrorCode, failureClass, HostingError, toHostingError } from "./errors.ts";
import type { StepEnd } from "./journal.ts";
import type { Logger } from "./log.ts";
import type { MatomoClient } from "./matomo.ts";
import { Outcome, type Settled, settledBy } from "./outcome.ts";
import type { RemoteShell } from "./remote.ts";
import {
  type Checks,
  KINDS,
  PLANS,
  policiesOf,
  type StepContext,
  type StepDef,
  type StepOptions,
  STEPS,
  type StepTimeouts,
} from "./steps.ts";
import type {
  Advance,
  ClaimedJob,
  ClaimedServer,
  JobKind,
  Lease,
  SiteCredentials,
  StepName,
  WorkerStore,
} from "./store.ts";
import type { FleetConfig, ServerAddress } from "./config.ts";

export interface WorkflowDeps {
  store: WorkerStore;
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

/** Without checks configured: no public addresses (DNS is not checked), and no served certificate to see. */
const NO_CHECKS: Checks = {
  publicIps: [],
  dnsPointsTo: () => Promise.reject(new HostingError("internal", "no DNS check configured")),
  servedCertificate: () => Promise.reject(new HostingError("https_unreachable", "no HTTPS check configured")),
};

/** Said once per process: where the database has no Vault, site passwords are not kept. */
let vaultAbsenceSaid = false;

/** A job being run: its lease, its log, its report, and the step ends the next transition writes. */
interface Run {
  job: ClaimedJob;
  lease: Lease;
  log: Logger;
  report: JobOutcome;
  /** Step ends not written yet: they travel with the next transition (the next step's start, or the exit). */
  pending: StepEnd[];
  /** This job's connection to its server failed: that failure is the server's trouble, not the step's. */
  unreachable?: HostingError;
}

/** How a job stops: an outcome for the exit to write, or settled already. */
type Ending = Outcome | Settled;
/** A step that ran to its end: done, or failed (`failure`); the job decides whether it goes on. */
type Ran = { end: StepEnd; failure?: HostingError };

const LEASE_LOST: Settled = { status: "lease_lost" };
/** Failures of our own machinery: never a reason to go on without an optional step. */
const MACHINERY: ReadonlySet<string> = new Set<ErrorCode>(["store_failed", "internal"]);

/** What the log says when a job stops, by what the workflow reports. */
const SAID: Record<JobStatus, [level: "info" | "warn" | "error", message: string]> = {
  active: ["info", "job succeeded"],
  removed: ["info", "site removed"],
  retrying: ["warn", "job not finished: queued again"],
  failed: ["error", "job failed"],
  released: ["info", "job given back to continue in another invocation"],
  waiting: ["warn", "server unreachable: the job waits for it, attempt kept"],
  cancelled: ["info", "job cancelled: the site is being removed"],
  lease_lost: ["warn", "lease lost: another worker owns this job now; stopping without writing"],
  interrupted: ["warn", "the database could not be reached; the job resumes once its lease expires"],
};

export class Invocation {
  readonly worker = `ef-${crypto.randomUUID().slice(0, 8)}`;
  readonly #deps: WorkflowDeps;
  readonly #log: Logger;
  readonly #clock: () => number;
  readonly #deadline: number;
  readonly #leaseSeconds: number;
  /** Aborted on shutdown: running steps stop, their jobs are given back. */
  readonly #shutdown = new AbortController();
  readonly #connections: Connections;
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
    this.#connections = new Connections(deps.connect, (name) => deps.store.serverOk(name));
  }

  get leaseSeconds(): number {
    return this.#leaseSeconds;
  }

  /** Stops claiming and gives running jobs back at once, without spending their attempts. */
  shutdown(reason: string): void {
    if (this.#shutdown.signal.aborted) return;
    const error = new HostingError("interrupted", `shutdown: ${reason}`, {
      publicMessage: `The worker is shutting down (${reason}); unfinished jobs were given back.`,
    });
    this.#stop(error);
    this.#shutdown.abort(error);
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
      await this.#connections.close();
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

  /** A job, from its claim to its end: its steps, then its outcome written (or settled already). */
  async #runJob(job: ClaimedJob): Promise<JobOutcome> {
    const started = this.#clock();
    const run: Run = {
      job,
      lease: { jobId: job.jobId, leaseToken: job.leaseToken },
      log: this.#log.child({ site: job.siteId, job: job.jobId, domain: job.domain ?? undefined }),
      report: {
        job_id: job.jobId,
        site_id: job.siteId,
        domain: job.domain,
        kind: job.kind,
        attempt: job.attempt,
        status: "active",
        steps: [],
        duration_ms: 0,
      },
      pending: [],
    };
    this.#onProgress?.({ kind: "job_started", job });
    run.log.info("job started", { kind: job.kind, attempt: job.attempt, max_attempts: job.maxAttempts });

    const ending = await this.#steps(run).catch((error) => this.#failed(run, toHostingError(error), []));
    const { detail, ...settled } = "type" in ending ? await this.#exit(run, ending) : ending;
    Object.assign(run.report, settled);
    const [level, said] = SAID[settled.status];
    run.log[level](said, {
      server: job.server.name,
      code: settled.error?.code,
      next_run_at: settled.next_run_at,
      doc_root: settled.doc_root,
      matomo_site_id: settled.matomo_site_id,
      detail,
    });
    run.report.duration_ms = Math.round(this.#clock() - started);
    this.#onProgress?.({ kind: "job_finished", job, outcome: run.report });
    return run.report;
  }

  /** The steps of the job's kind in order, each journaled; the job's completion, or where it stopped. */
  async #steps(run: Run): Promise<Ending> {
    const { job } = run;
    // Validated before anything reaches the server; an invalid domain never opens a connection. The text
    // judged must be exactly the stored text, not what a driver made of it.
    if (!job.domainIntact) return Outcome.failure(unreadableDomain(), []);
    const kind = KINDS[job.kind];
    const context = {
      job,
      domain: parseDomain(job.domain),
      log: run.log,
      cloudPanel: this.#cloudPanel(run),
      matomo: this.#deps.matomo,
      checks: this.#deps.checksFor?.(job.server) ?? NO_CHECKS,
      results: {} as StepContext["results"],
    };
    let backfill: JobKind | null = null;

    for (const name of kind.steps) {
      const def = STEPS[name];
      if (this.#passedOver(run, def, context)) continue;
      const ran = await this.#step(run, def, context);
      if (!("end" in ran)) return ran;
      run.pending = [ran.end];
      if (!ran.failure) {
        context.results[name] = ran.end.result ?? {};
      } else if (def.optional && kind.backfill && !MACHINERY.has(ran.failure.code)) {
        if (this.#goesOnWithout(run, def, ran.failure)) backfill = kind.backfill;
      } else {
        return this.#failed(run, ran.failure, run.pending);
      }
    }
    return kind.complete({ ...context, warning: run.report.warning, backfill, done: run.pending });
  }

  /**
   * A step that does not run: done in an earlier run (the journal says so; its result is reused), or skipped in
   * this deployment (journaled with the next transition).
   */
  #passedOver(run: Run, def: StepDef, context: Pick<StepContext, "results" | "checks">): boolean {
    const step = def.name;
    const prior = run.job.steps[step];
    if (prior?.state === "done") {
      context.results[step] = prior.result;
      run.report.steps.push({ step, status: "already_done", duration_ms: 0 });
      return true;
    }
    const skip = def.skip({ matomo: this.#deps.matomo, options: this.#stepOptions, checks: context.checks });
    if (!skip) return false;
    const { code, message, level } = skip;
    run.pending.push({ step, state: "skipped", code, message, level });
    run.report.steps.push({ step, status: "skipped", duration_ms: 0, code });
    if (level === "warn") run.report.warning = { code, message };
    return true;
  }

  /**
   * An optional step failed in a job that may go on without it: the site goes active without it, with a
   * warning. True when a retry can help (the kind's backfill job does it later).
   */
  #goesOnWithout(run: Run, def: StepDef, { code, transient, publicMessage }: HostingError): boolean {
    run.report.warning = {
      code,
      message: transient
        ? `${publicMessage} The site is active without analytics; it is retried automatically.`
        : `${publicMessage} The site is active without analytics; fix the cause, then retry it.`,
    };
    run.log.warn("optional step failed; the site goes active without it", {
      step: def.name,
      code,
      backfill: transient,
    });
    return transient;
  }

  /**
   * One step: started with the ends before it (one statement), run within a timeout that fits the deadline
   * while its lease is renewed, and its end returned for the next transition; or the job's ending, when the
   * job stops at this step (time, shutdown, its server unreachable, the database's answer, the lease lost).
   */
  async #step(
    run: Run,
    def: StepDef,
    context: Omit<StepContext, "credentials" | "signal">,
  ): Promise<Ran | Ending> {
    const step = def.name;
    const timeoutMs = def.timeoutMs(this.#deps.timeouts);
    const left = this.#remaining() - RESERVE_MS;
    if (this.#shutdown.signal.aborted) return Outcome.release(SHUTDOWN_REASON, run.pending);
    if (left < Math.min(run.job.estimates[step] ?? DEFAULT_STEP_MS, timeoutMs)) {
      return Outcome.release(`Time budget spent before ${step}; queued to continue.`, run.pending);
    }
    // A password is registered before it goes anywhere, so no log line or write can carry it.
    const candidate = def.password ? generatePassword() : undefined;
    if (candidate) run.log.redactor.add(candidate);
    const advanced = await this.#deps.store.advance(run.lease, this.#leaseSeconds, {
      done: run.pending,
      start: step,
      domain: def.claimsDomain ? context.domain : undefined,
      password: candidate,
    });
    if (!advanced.ok) return refused(advanced);
    run.pending = [];
    const credentials = candidate ? this.#credentials(advanced.credentials, candidate, run.log) : undefined;
    this.#onProgress?.({ kind: "step_started", job: run.job, step });

    const effective = Math.min(timeoutMs, left);
    const started = this.#clock();
    const lost = new AbortController();
    // A step whose time was cut to the deadline stops there, whatever its client does with the timeout.
    const atDeadline = effective < timeoutMs ? AbortSignal.timeout(Math.max(0, effective)) : null;
    const signal = AbortSignal.any([lost.signal, this.#shutdown.signal, ...(atDeadline ? [atDeadline] : [])]);
    const renewal = this.#renewWhileRunning(run.lease, step, lost);
    try {
      const done = await abortable(def.run({ ...context, credentials, signal }, effective), signal);
      const duration = Math.round(this.#clock() - started);
      run.log.info("step done", { step, duration_ms: duration });
      const end: StepEnd = {
        step,
        state: "done",
        result: done.result,
        code: `${step}_done`,
        message: `${done.message} (${duration} ms)`,
        durationMs: duration,
        ...policiesOf(def, done.result),
      };
      return { end: this.#ended(run, end, { step, status: "done", duration_ms: duration }) };
    } catch (error) {
      if (lost.signal.aborted) return LEASE_LOST;
      const duration = Math.round(this.#clock() - started);
      return this.#stepFailed(run, step, toHostingError(error), duration, {
        atDeadline: atDeadline?.aborted ?? false,
        shortened: effective < timeoutMs,
      });
    } finally {
      clearInterval(renewal);
    }
  }

  /**
   * A step that failed or was stopped: the job given back (shutdown, time), its server's trouble (the
   * connection failed), or the step's failed end, for the job to decide on.
   */
  #stepFailed(
    run: Run,
    step: StepName,
    failure: HostingError,
    duration: number,
    time: { atDeadline: boolean; shortened: boolean },
  ): Ran | Ending {
    const cut = (reason: string): StepEnd[] => [{
      step,
      state: "failed",
      code: "interrupted",
      message: `${step} stopped after ${duration} ms: ${reason}`,
      level: "warn",
      durationMs: duration,
    }];
    if (this.#shutdown.signal.aborted) return Outcome.release(SHUTDOWN_REASON, cut("shutdown"));
    if (failure === run.unreachable && failureClass(failure.code).serverTrouble) {
      return Outcome.serverTrouble(
        failure,
        cut(`server ${run.job.server.name} unreachable (${failure.code})`),
      );
    }
    // A timeout shortened by our own deadline says nothing about the server: continue elsewhere, attempt kept.
    if (time.atDeadline || (failure.code === "ssh_timeout" && time.shortened)) {
      return Outcome.release(`Time budget spent during ${step}; queued to continue.`, cut("time budget"));
    }
    const end: StepEnd = {
      step,
      state: "failed",
      code: failure.code,
      message: `${step} failed after ${duration} ms: ${failure.message}`,
      level: failure.transient ? "warn" : "error",
      durationMs: duration,
    };
    const { code, publicMessage: message } = failure;
    return {
      end: this.#ended(run, end, { step, status: "failed", duration_ms: duration, code, message }),
      failure,
    };
  }

  /** A step's end, reported (its outcome, its progress event) and returned for the next transition. */
  #ended(run: Run, end: StepEnd, outcome: StepOutcome): StepEnd {
    run.report.steps.push(outcome);
    this.#onProgress?.({ kind: "step_finished", job: run.job, outcome });
    return end;
  }

  /** A failure as the job's ending: the database out of reach stops the invocation; any other is written. */
  #failed(run: Run, failure: HostingError, done: StepEnd[]): Ending {
    if (failure.code === "store_failed") return this.#interrupted(failure);
    // The connection broke mid-command: the next job on this server connects again.
    if (failure.code === "ssh_unreachable") this.#connections.drop(run.job.server.name);
    return Outcome.failure(failure, done);
  }

  /**
   * The job's exit: the outcome written in one guarded statement. An outcome the database refuses (a check of
   * its own) fails the job instead; a failure it cannot take leaves the job to its lease.
   */
  async #exit(run: Run, outcome: Outcome): Promise<Settled> {
    try {
      const answer = await this.#deps.store.exit(run.lease, outcome);
      return answer.ok ? settledBy(outcome, answer) : LEASE_LOST;
    } catch (error) {
      const failure = toHostingError(error);
      if (failure.code === "store_failed" || outcome.type === "fail" || outcome.type === "snooze") {
        return this.#interrupted(failure);
      }
      return await this.#exit(run, Outcome.failure(failure, []));
    }
  }

  #interrupted(failure: HostingError): Settled {
    this.#stop(failure);
    return { status: "interrupted", error: { code: failure.code, message: failure.publicMessage } };
  }

  get #stepOptions(): StepOptions {
    return { matomoOnRemove: this.#deps.matomoOnRemove ?? "keep" };
  }

  /** The job's CloudPanel client, on its server's connection (opened once per server and invocation). */
  #cloudPanel(run: Run): () => CloudPanel {
    let client: CloudPanel | undefined;
    const shell = () =>
      this.#connections.shell(run.job.server).catch((error) => {
        throw run.unreachable = toHostingError(error);
      });
    return () => client ??= new CloudPanel(shell, run.log);
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
    const lose = () => lost.abort(new HostingError("lease_lost", `job ${lease.jobId}: the lease was lost`));
    /** Gives the step up shortly before the lease could have expired unrenewed. */
    const giveUpIfExpiring = () => {
      if (this.#clock() >= expiresAt - leaseMs / 6) lose();
    };
    return setInterval(async () => {
      if (lost.signal.aborted) return;
      // A renewal stuck on a stalled connection must not keep the step running past the lease it may have lost.
      if (inFlight) return giveUpIfExpiring();
      inFlight = true;
      const sent = this.#clock();
      try {
        if (await this.#deps.store.heartbeat(lease, this.#leaseSeconds, step)) expiresAt = sent + leaseMs;
        else lose();
      } catch (error) {
        this.#log.warn("lease renewal failed", { step, code: toHostingError(error).code });
        giveUpIfExpiring();
      } finally {
        inFlight = false;
      }
    }, leaseMs / 3);
  }
}

/** A domain whose text did not survive being read: judged invalid, as the stored text may be fine. */
function unreadableDomain(): HostingError {
  return new HostingError("invalid_domain", "the domain read differs from the stored text", {
    publicMessage:
      "The domain is invalid: it contains a character that does not survive being read (such as a byte order mark or another invisible character); write it again without it.",
  });
}

/** The database's refusal at a step boundary: it ended the job itself (cancelled, domain taken), or the lease is gone. */
function refused(answer: Exclude<Advance, { ok: true }>): Settled {
  switch (answer.reason) {
    case "lease_lost":
      return LEASE_LOST;
    case "cancelled":
      return { status: "cancelled" };
    case "domain_taken": {
      // Failed by the database, or queued again while the domain is still being removed for another site.
      const next = answer.next?.state === "queued" ? answer.next : null;
      return {
        status: next ? "retrying" : "failed",
        error: { code: answer.code, message: answer.message },
        ...(next ? { next_run_at: next.run_at } : {}),
      };
    }
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
