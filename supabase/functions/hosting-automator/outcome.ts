/**
 * How a running job ends, as values. Each way has a named constructor and one row of OUTCOMES, which says what
 * JSON the database's exit takes (`Store.exit`: one statement, the lease checked once, there) and what the
 * workflow reports once it is written. Adding a way for a job to end is a constructor and a row here.
 *
 * Every outcome carries `done`: the step ends not written yet, journaled by the same statement.
 */
import { type ErrorCode, failureClass, type HostingError, type Schedule } from "./errors.ts";
import { type EndJson, endsJson, type StepEnd } from "./journal.ts";
import type { ExitTaken, JobKind } from "./store.ts";
import type { JobStatus } from "./workflow.ts";

/** A failure's texts: the public one (safe for anyone), the internal one (redacted when written). */
interface Texts {
  code: ErrorCode;
  publicMessage: string;
  internalMessage: string;
}

export type Outcome =
  /** The site is active; `backfillKind`: queue a job of that kind, an optional step failed for now. */
  | {
    type: "active";
    done: StepEnd[];
    message: string;
    docRoot: string;
    matomoSiteId: number | null;
    certificateExpiresAt: string | null;
    backfillKind: JobKind | null;
  }
  /** The site's removal is done. */
  | { type: "removed"; done: StepEnd[]; message: string }
  /** The attempt failed: retried with backoff, or failed (permanent, out of attempts, its attempt limit met). */
  | { type: "fail"; done: StepEnd[]; permanent: boolean; attemptLimit: number | null } & Texts
  /** Not ready yet: queued again on the schedule's own backoff, attempt kept; failed after its limit. */
  | { type: "snooze"; done: StepEnd[]; schedule: Schedule } & Texts
  /** Given back (time ran out, the worker shuts down): queued at once, attempt kept. */
  | { type: "release"; done: StepEnd[]; reason: string }
  /** The job's server could not be reached: its circuit opens, the job waits for it, attempt kept. */
  | { type: "server_trouble"; done: StepEnd[] } & Texts;

/** How the site's own job kinds end well: a site active, a removal done. */
export type Completion = Extract<Outcome, { type: "active" | "removed" }>;

/** The JSON `public.hosting_exit(p_job_id, p_lease_token, p_outcome)` takes; texts redacted. */
export type OutcomeJson =
  | {
    type: "active";
    done: EndJson[] | null;
    message: string | null;
    doc_root: string;
    matomo_site_id: number | null;
    certificate_expires_at: string | null;
    backfill_kind: JobKind | null;
  }
  | { type: "removed"; done: EndJson[] | null; message: string | null }
  | {
    type: "fail";
    done: EndJson[] | null;
    code: ErrorCode;
    public_message: string;
    internal_message: string;
    permanent: boolean;
    attempt_limit: number | null;
  }
  | {
    type: "snooze";
    done: EndJson[] | null;
    code: ErrorCode;
    public_message: string;
    internal_message: string;
    schedule: Schedule;
  }
  | { type: "release"; done: EndJson[] | null; reason: string }
  | { type: "server_trouble"; done: EndJson[] | null; code: ErrorCode; message: string };

/** What the workflow reports of a job once its end is settled; `detail` goes to the log only. */
export interface Settled {
  status: JobStatus;
  error?: { code: string; message: string };
  next_run_at?: string;
  doc_root?: string;
  matomo_site_id?: number | null;
  detail?: string;
}

/** The named constructors. */
export const Outcome = {
  active: (
    site: Omit<Extract<Outcome, { type: "active" }>, "type" | "done">,
    done: StepEnd[],
  ): Completion => ({
    type: "active",
    done,
    ...site,
  }),
  removed: (message: string, done: StepEnd[]): Completion => ({ type: "removed", done, message }),
  /**
   * A failure, as its code's class says: not ready yet (the code has a schedule of its own) waits on that
   * schedule; any other failure fails the attempt.
   */
  failure(error: HostingError, done: StepEnd[]): Outcome {
    const texts = { code: error.code, publicMessage: error.publicMessage, internalMessage: error.message };
    const schedule = failureClass(error.code).schedule;
    return schedule ? { type: "snooze", done, schedule, ...texts } : {
      type: "fail",
      done,
      permanent: !error.transient,
      attemptLimit: error.attemptLimit ?? null,
      ...texts,
    };
  },
  release: (reason: string, done: StepEnd[]): Outcome => ({ type: "release", done, reason }),
  serverTrouble: (error: HostingError, done: StepEnd[]): Outcome => ({
    type: "server_trouble",
    done,
    code: error.code,
    publicMessage: error.publicMessage,
    internalMessage: error.message,
  }),
};

type Redact = (text: string) => string;
type Of<T extends Outcome["type"]> = Extract<Outcome, { type: T }>;
interface Row<T extends Outcome["type"]> {
  /** The outcome's own fields of the exit's JSON (beside `type` and `done`). */
  json(o: Of<T>, redact: Redact): Omit<Extract<OutcomeJson, { type: T }>, "type" | "done">;
  /** What the workflow reports once the database took it. */
  settled(o: Of<T>, taken: ExitTaken): Settled;
}

/** A failure the database took: queued again (with when), or failed. */
const failed = (o: Texts, taken: ExitTaken): Settled => ({
  status: taken.state === "failed" ? "failed" : "retrying",
  error: { code: o.code, message: o.publicMessage },
  ...(taken.state === "failed" || taken.run_at === undefined ? {} : { next_run_at: taken.run_at }),
  detail: o.internalMessage,
});

export const OUTCOMES: { [T in Outcome["type"]]: Row<T> } = {
  active: {
    json: (o, redact) => ({
      message: redact(o.message),
      doc_root: o.docRoot,
      matomo_site_id: o.matomoSiteId,
      certificate_expires_at: o.certificateExpiresAt,
      backfill_kind: o.backfillKind,
    }),
    settled: (o) => ({ status: "active", doc_root: o.docRoot, matomo_site_id: o.matomoSiteId }),
  },
  removed: {
    json: (o, redact) => ({ message: redact(o.message) }),
    settled: () => ({ status: "removed" }),
  },
  fail: {
    json: (o, redact) => ({
      code: o.code,
      public_message: redact(o.publicMessage),
      internal_message: redact(o.internalMessage),
      permanent: o.permanent,
      attempt_limit: o.attemptLimit,
    }),
    settled: failed,
  },
  snooze: {
    json: (o, redact) => ({
      code: o.code,
      public_message: redact(o.publicMessage),
      internal_message: redact(o.internalMessage),
      schedule: o.schedule,
    }),
    settled: failed,
  },
  release: {
    json: (o, redact) => ({ reason: redact(o.reason) }),
    settled: (o) => ({ status: "released", detail: o.reason }),
  },
  server_trouble: {
    json: (o, redact) => ({ code: o.code, message: redact(o.publicMessage) }),
    settled: (o) => ({
      status: "waiting",
      error: { code: o.code, message: o.publicMessage },
      detail: o.internalMessage,
    }),
  },
};

/** The row of an outcome's own type (TypeScript cannot follow the pairing through an indexed access). */
function rowOf(o: Outcome): Row<Outcome["type"]> {
  return OUTCOMES[o.type] as unknown as Row<Outcome["type"]>;
}

/** The JSON the exit takes: texts through `redact`; results, doc roots and kept values as given. */
export function outcomeJson(o: Outcome, redact: Redact): OutcomeJson {
  return { type: o.type, done: endsJson(o.done, redact), ...rowOf(o).json(o, redact) } as OutcomeJson;
}

/** What the workflow reports once the database took the outcome. */
export function settledBy(o: Outcome, taken: ExitTaken): Settled {
  return rowOf(o).settled(o, taken);
}
